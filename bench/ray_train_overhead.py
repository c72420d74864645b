"""The fixed cost of one Ray Train run: a ``TorchTrainer`` whose workers only import torch and report once.

Every fine-tuning trial of a study and most of the slow tests are Ray Train runs; before a worker trains at
all, Ray Train V2 starts a controller and helper actors (placement-group cleaner, synchronisation actor,
dataset manager), each in a Python process of its own, plus the workers, and sets up the torch process
group. This measures that cost as machine CPU seconds (user + nice + system, Ray's workers run niced) and
wall seconds per run, after a local Ray has started (its own cost printed first).

    python bench/ray_train_overhead.py [--runs 3] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import psutil


def busy() -> float:
    times = psutil.cpu_times()
    return times.user + times.nice + times.system


def noop(config) -> None:
    import ray.train
    import torch  # noqa: F401  (what every real worker imports)

    ray.train.report({"done": 1})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cpu, wall = busy(), time.time()
    ray.init(num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False)
    time.sleep(3)                                      # the prestarted workers settle
    print(f"ray.init (no dashboard): {busy() - cpu:.1f} s CPU, {time.time() - wall:.1f} s wall (3 s of it idle)")
    storage = tempfile.mkdtemp(prefix="ray-train-overhead-")
    for workers in args.workers:
        for run in range(args.runs):
            cpu, wall = busy(), time.time()
            TorchTrainer(noop, scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
                         run_config=RunConfig(storage_path=storage, name=f"noop-{workers}-{run}")).fit()
            print(f"no-op TorchTrainer, {workers} worker(s), run {run}: {busy() - cpu:.1f} s CPU, "
                  f"{time.time() - wall:.1f} s wall", flush=True)


if __name__ == "__main__":
    main()
