"""The machine a run is on, the ceiling of its matrix products, and a run's speed as a share of it.

nanoGPT prints its model-FLOPs utilisation (MFU) against the GPU's peak; a CPU's peak depends on its ISA
(AVX2, AVX-512, AVX-512 BF16, AMX) and on how many threads a run has, and these VMs vary, so the ceiling
here is *measured*: the best of a few square matrix products (``torch.mm``) at the run's precision and
thread count, once per process. Utilisation is then the model FLOPs a run did per second over that
ceiling. Model FLOPs of a Transformer encoder (Kaplan et al. 2020, as nanoGPT's ``estimate_mfu``): about
``2 * parameters`` per token for a forward pass plus ``4 * layers * length * hidden`` for attention, and
three times that for forward + backward.
"""

from __future__ import annotations

import platform
import time
from functools import lru_cache
from pathlib import Path

import torch

from sbmoe_ray.runtime.precision import cpu_flags, native_bf16


def machine() -> dict[str, str | int]:
    """What the numbers of a run depend on: CPU model and ISA, threads, native bf16, GPU."""
    model = platform.processor() or "unknown CPU"
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    amx = "amx_bf16" in cpu_flags()
    return {"cpu": model, "capability": torch.backends.cpu.get_cpu_capability() + (" + AMX" if amx else ""),
            "native_bf16_cpu": str(native_bf16("cpu")), "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}


def describe_machine() -> str:
    m = machine()
    return (f"{m['cpu']} ({m['capability']}, native bf16: {m['native_bf16_cpu']}), {m['threads']} threads, "
            f"GPU: {m['gpu']}")


@lru_cache(maxsize=8)
def matmul_ceiling(precision: str, device: str = "cpu", threads: int | None = None, size: int = 1024) -> float:
    """Measured FLOP/s of a ``size`` x ``size`` matrix product at ``precision`` on ``device``: the best
    of repeated timings, after a warm-up (about 0.3 s on a CPU)."""
    threads = threads or torch.get_num_threads()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # A generator of its own: measuring must not move the run's RNG (gating noise, dropout).
        generator = torch.Generator(device=device).manual_seed(0)
        a, b = (torch.randn(size, size, device=device, dtype=dtype, generator=generator) for _ in range(2))
        best = float("inf")
        for _ in range(6):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            torch.mm(a, b)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        return 2 * size**3 / best
    finally:
        torch.set_num_threads(old)


def encoder_flops_per_token(backbone, length: int) -> float:
    """Forward FLOPs per token of a Transformer encoder at sequence ``length`` (embeddings excluded)."""
    config = backbone.config
    params = sum(p.numel() for name, p in backbone.named_parameters() if not name.startswith("embeddings."))
    return 2 * params + 4 * config.num_hidden_layers * length * config.hidden_size


def utilisation(flops: float, seconds: float, precision: str, device: str = "cpu") -> float:
    """The share of the measured matmul ceiling that ``flops`` in ``seconds`` reached."""
    return flops / max(seconds, 1e-9) / matmul_ceiling(precision, device)
