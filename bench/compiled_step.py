"""Compiled kernels against eager ones for stage 2's training step (issue 22, item 7: converged stage 2 needs
more steps in the same budget). ``torch.compile`` (Inductor; on CPU it generates fused C++/OpenMP kernels) is
applied to the encoder of plain MiniLM fine-tuning, as stage 2 trains it (our loop, one process, batch 64,
passages <= 256 tokens, queries <= 64, bf16 where native else fp32, the machine's threads). Batches are padded
to their longest text, so shapes vary from step to step: the encoder is compiled with ``dynamic=True`` (one
graph for every length) and the first ``--warmup`` steps, where Inductor compiles, are timed apart. Eager and
compiled runs are interleaved over rounds (these VMs drift +-30 % between runs, not within one); the script
prints the median seconds per step, the ratio to eager, and the compile time a fine-tuning pays once per
worker.

    python bench/compiled_step.py [--rounds 2] [--steps 4] [--warmup 3] [--mode default]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from train_throughput import settings, stage2_step

from sbmoe_ray.train import TrainConfig, resolved
from sbmoe_ray.train.loop import build_optimizer, run_epoch
from sbmoe_ray.train.routes import ROUTES, objective_for


def timed(cfg: TrainConfig, compiled: bool, mode: str, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds of the warm-up steps, median seconds per measured step) of one fresh model."""
    cfg, cpu = resolved(cfg), torch.device("cpu")
    route = ROUTES[cfg.route]
    model = route.model(cfg)
    if compiled:
        model.backbone = torch.compile(model.backbone, dynamic=True, mode=mode)
    optimizer, scheduler = build_optimizer(model, cfg)
    data, step = route.inputs(cfg, cpu), route.step(cfg, objective_for(cfg), cpu)
    start = time.perf_counter()
    run_epoch(model, step, data, data.train, settings(cfg, max_steps_per_epoch=warmup), 0, 1, 0, optimizer, scheduler)
    warm = time.perf_counter() - start
    metrics = run_epoch(model, step, data, data.train, settings(cfg, max_steps_per_epoch=steps), 0, 1, 1,
                        optimizer, scheduler)
    return warm, metrics["step_seconds_median"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--mode", default="default", help="torch.compile mode: default, max-autotune-no-cudagraphs")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    from sbmoe_ray.runtime.hardware import describe_machine

    cfg = stage2_step(args.data_dir)
    print(f"machine: {describe_machine()}; torch {torch.__version__}; MiniLM N=0, batch 64, median s/step of "
          f"{args.steps} steps after {args.warmup} warm-up steps, {args.rounds} interleaved rounds", flush=True)
    runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(args.rounds):
        for compiled in (False, True):
            runs[compiled].append(timed(cfg, compiled, args.mode, args.warmup, args.steps))
            print(f"   {'compiled' if compiled else 'eager   '}  warm-up {runs[compiled][-1][0]:6.1f} s  "
                  f"{runs[compiled][-1][1]:6.2f} s/step", flush=True)
    eager = statistics.median(t for _, t in runs[False])
    for compiled in (False, True):
        t = statistics.median(s for _, s in runs[compiled])
        warm = statistics.median(w for w, _ in runs[compiled])
        print(f"{'torch.compile' if compiled else 'eager':>13}: {t:6.2f} s/step  {eager / t:5.2f}x  "
              f"warm-up ({args.warmup} steps) {warm:6.1f} s", flush=True)


if __name__ == "__main__":
    main()
