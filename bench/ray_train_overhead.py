"""The fixed cost of one Ray Train run: a ``TorchTrainer`` whose workers only import torch and report once.

Every fine-tuning trial of a study and most of the slow tests are Ray Train runs; before a worker trains at
all, Ray Train V2 starts a controller and helper actors (placement-group cleaner, synchronisation actor,
dataset manager), each in a Python process of its own, plus the workers, and sets up the torch process
group. This measures that cost as machine CPU seconds (user + nice + system, Ray's workers run niced) and
wall seconds per run, after a local Ray has started (its own cost printed first), at each interval of the
controller's poll of its workers (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``: Ray's default 2 s, and what
:mod:`sbmoe_ray.train.launch` sets unless the user did); the runs of each setting interleaved.

    python bench/ray_train_overhead.py [--runs 3] [--workers 1 2] [--polls 2.0 0.25]
"""

from __future__ import annotations

import argparse
import os
import statistics
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
    parser.add_argument("--polls", nargs="+", default=["2.0", "0.25"], help="controller poll intervals, seconds")
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
    walls: dict[tuple[int, str], list[float]] = {}
    for run in range(args.runs):
        for workers in args.workers:
            for poll in args.polls:
                os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = poll     # read when the trainer is built
                cpu, wall = busy(), time.time()
                TorchTrainer(noop, scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
                             run_config=RunConfig(storage_path=storage, name=f"noop-{workers}-{poll}-{run}")).fit()
                walls.setdefault((workers, poll), []).append(time.time() - wall)
                print(f"no-op TorchTrainer, {workers} worker(s), poll {poll} s, run {run}: {busy() - cpu:.1f} s CPU, "
                      f"{walls[workers, poll][-1]:.1f} s wall", flush=True)
    print("\n| workers | poll (s) | median wall (s) | vs the first poll |\n|---|---|---|---|")
    for (workers, poll), times in walls.items():
        first = statistics.median(walls[workers, args.polls[0]])
        print(f"| {workers} | {poll} | {statistics.median(times):.1f} | {statistics.median(times) / first:.2f} |")


if __name__ == "__main__":
    main()
