"""Numeric precision: ``auto`` resolved from the hardware, and the autocast context that applies it.

bf16 autocast halves the cost of a Transformer forward only where bf16 is native: a CUDA device that
supports it, or a CPU with AVX-512 BF16 or AMX (measured on such a CPU: ~2x faster than fp32, cosine
>= 0.9999 to fp32 embeddings). On a CPU without them (AVX2 only, most laptops) PyTorch emulates bf16 and
a matrix product runs ~50x slower than fp32. So the default ``auto`` picks bf16 only where it is native,
and an explicit ``bf16`` on such a CPU still runs, with one warning saying how much slower it will be.
The resolved value is what the run reports, logs and keys its embedding cache with.
"""

from __future__ import annotations

import os
import warnings
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path

PRECISIONS = ("auto", "fp32", "bf16")
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA): at these levels and above its kernels use native bf16; a lower cap
# (e.g. AVX2, with ATEN_CPU_CAPABILITY=avx2: how bench/ and getting-started emulate an AVX2-only CPU) does not.
BF16_ISAS = ("AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
             "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "ALL", "DEFAULT")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: str, flags: frozenset[str] | None = None) -> bool:
    """Whether bf16 runs natively on ``device`` ("cpu" or "cuda[:i]"); ``flags`` injects CPU flags (tests)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return not isa_capped() and any(flag in (cpu_flags() if flags is None else flags) for flag in NATIVE_BF16_CPU_FLAGS)


def isa_capped() -> bool:
    """Whether ONEDNN_MAX_CPU_ISA caps oneDNN below its native-bf16 instruction sets."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper() not in BF16_ISAS


def resolve_precision(precision: str, device: str, flags: frozenset[str] | None = None) -> str:
    """``auto`` -> ``bf16`` where native, else ``fp32``; an explicit ``bf16`` where it is not native warns."""
    native = native_bf16(device, flags)
    if precision == "auto":
        return "bf16" if native else "fp32"
    if precision == "bf16" and not native:
        warnings.warn(f"precision=bf16 on a {device} without native bf16 (no AVX-512 BF16/AMX): PyTorch emulates "
                      "it and matrix products run ~50x slower than fp32; use precision=auto or fp32",
                      RuntimeWarning, stacklevel=2)
    return precision


def explain(precision: str, device: str) -> str:
    """One line for the start of a run: what was chosen and why."""
    native = native_bf16(device)
    if device.startswith("cuda"):
        why = "bf16 is native here" if native else "no native bf16 here"
    elif native:
        why = "CPU has AVX-512 BF16/AMX"
    else:
        cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
        why = f"ONEDNN_MAX_CPU_ISA={cap}" if isa_capped() else "CPU has no AVX-512 BF16/AMX"
    return f"precision {precision} on {device} ({why})"


def autocast(device: str, precision: str):
    """bf16 autocast on the given device, or nothing for fp32 (``precision`` must be resolved)."""
    if precision == "bf16":
        import torch

        return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
    return nullcontext()


def device_for(use_gpu: bool) -> str:
    """``cuda`` when a GPU is asked for and present, else ``cpu``."""
    if not use_gpu:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
