"""Does capping oneDNN, ATen and MKL at AVX2 make this CPU behave like an AVX2-only one?

An AVX2-only CPU runs fp32 matrix products at its AVX2 rate and bf16 ones ~50x slower (emulated). Run
this once plainly and once with ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
MKL_ENABLE_INSTRUCTIONS=AVX2`` (how docs/getting-started.md measures the quick start "on an AVX2-only CPU" with a CPU
that has AVX-512 BF16): one thread, a 512 x 512 fp32 matmul, the same under bf16 autocast, and GFLOP/s;
and what ``precision: auto`` resolves to.

    python bench/isa_cap.py
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 python bench/isa_cap.py
"""

from __future__ import annotations

import os
import time

import torch

from sbmoe_ray.runtime.hardware import machine
from sbmoe_ray.runtime.precision import explain, resolve_precision


def seconds(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    print(machine())
    print("ONEDNN_MAX_CPU_ISA =", os.environ.get("ONEDNN_MAX_CPU_ISA", "(unset)"),
          "| ATen capability:", torch.backends.cpu.get_cpu_capability())
    print(explain(resolve_precision("auto", "cpu"), "cpu"))
    for threads in (1, 2):
        torch.set_num_threads(threads)
        a, b = torch.randn(512, 512), torch.randn(512, 512)
        fp32 = seconds(lambda a=a, b=b: a @ b, 50)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = seconds(lambda a=a, b=b: a @ b, 5)
        flop = 2 * 512 ** 3
        print(f"{threads} thread(s): fp32 {flop / fp32 / 1e9:.0f} GFLOP/s, bf16 autocast {flop / bf16 / 1e9:.1f} "
              f"GFLOP/s ({bf16 / fp32:.1f}x the fp32 time)")


if __name__ == "__main__":
    main()
