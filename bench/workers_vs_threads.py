"""One process with 2 threads against 2 Ray Train (gloo) workers with 1 thread each, at each depth: which way
a 2-core machine should train a stage-2 trial.

The real code path each way (``fit``): ``num_workers: 1, cpus_per_worker: 2`` trains in the calling process;
``num_workers: 2, cpus_per_worker: 1`` starts a Ray Train run whose 2 workers each take half of every batch
(negatives all-gathered, gradients all-reduced over gloo). MiniLM on SciFact, batch 64, ``--steps`` steps an
epoch, one epoch, no test sets; both ways alternate over ``--rounds`` rounds. Reported per depth: the median
step (``step_seconds_median``, a worker's step with the global batch split) and the run's wall time (start-up
included; a first uncounted run builds the depth's state cache), and their ratios within this run.

    python bench/workers_vs_threads.py [--depths 1 2] [--steps 12] [--rounds 2] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import torch


def run(depth, workers: int, steps: int, data_dir: str | None, storage: str, name: str) -> tuple[float, float]:
    from sbmoe_ray.train import TrainConfig, fit

    cfg = TrainConfig.from_dict({
        "model": {"base_model": "minilm", "max_length": 256, "num_experts": 3, "top_k": 1},
        "data": {"train_dataset": "scifact", "test_datasets": [], **({"data_dir": data_dir} if data_dir else {})},
        "optim": {"encoder_lr": 2e-5, "moe_lr": 1e-3, "trained_layers": depth, "epochs": 1, "batch_size": 64,
                  "max_steps_per_epoch": steps},
        "scaling": {"num_workers": workers, "cpus_per_worker": 2.0 / workers},
        "run": {"storage_path": storage, "name": name}})
    start = time.perf_counter()
    result = fit(cfg)
    return result.history[-1]["step_seconds_median"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", nargs="+", default=["1", "2"])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"capability {torch.backends.cpu.get_cpu_capability()}")
    with tempfile.TemporaryDirectory() as storage:
        for depth in [d if d == "all" else int(d) for d in args.depths]:
            run(depth, 1, 1, args.data_dir, storage, f"d{depth}-warm")   # builds the depth's state cache, uncounted
            got: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
            for r in range(args.rounds):
                for workers in (1, 2):
                    got[workers].append(run(depth, workers, args.steps, args.data_dir, storage,
                                            f"d{depth}-w{workers}-r{r}"))
            step = {w: statistics.median(s for s, _ in v) for w, v in got.items()}
            wall = {w: statistics.median(t for _, t in v) for w, v in got.items()}
            print(f"depth {depth}: 1 process x 2 threads: step {step[1]:.2f} s, run {wall[1]:.0f} s; "
                  f"2 gloo workers x 1 thread: step {step[2]:.2f} s, run {wall[2]:.0f} s; "
                  f"2 workers / 1 process: step {step[2] / step[1]:.2f}x, run {wall[2] / wall[1]:.2f}x", flush=True)


if __name__ == "__main__":
    main()
