"""Settings whose value depends on the machine, declared per kind of hardware in the study YAML.

Stage 2's cost differs some 3x and more between a CPU with native bf16 (AVX-512 BF16, AMX; a GPU) and
one without (AVX2 only: bf16 is emulated, so the default precision falls back to fp32). A quick start that
must end within a fixed time therefore wants, say, more seeds where bf16 is native. That is the quick
start's policy, not the library's: a setting may be written as ``{native_bf16: 2, otherwise: 1}`` and is
resolved where stage 2 trains (``cuda`` with ``finetune.use_gpu``, else this CPU). The library's own
defaults never depend on the machine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

HARDWARE_KEYS = ("native_bf16", "otherwise")


def per_hardware(check: Callable[[Any], str | None], example: str):
    """A single-field check for a value or a mapping ``{native_bf16: v, otherwise: v}`` (each value checked)."""
    def checked(value: Any) -> str | None:
        if value == "auto":
            return (f"'auto' was the quick start's machine policy and is no longer a library default; write it in "
                    f"the study YAML: {example}")
        if isinstance(value, dict):
            if sorted(value) != sorted(HARDWARE_KEYS):
                return f"a value per kind of hardware needs exactly the keys {list(HARDWARE_KEYS)}, e.g. {example}"
            problems = [f"{key}: {problem}" for key, v in value.items() if (problem := check(v))]
            return "; ".join(problems) or None
        return check(value)
    return checked


def resolve(value: Any, device: str) -> tuple[Any, str]:
    """The value for this machine's kind (``device``: where it applies) and why."""
    if not isinstance(value, dict):
        return value, "set"
    from sbmoe_ray.runtime.precision import native_bf16

    native = native_bf16(device)
    key = "native_bf16" if native else "otherwise"
    return value[key], f"{'native' if native else 'no native'} bf16 on {device}: the config's {key} value"
