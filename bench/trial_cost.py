"""Cost and result of one real trial: ``fit`` on a config, with the whole run's peak memory.

Peak memory is the largest sum of the resident set sizes of this process and all its descendants (the
local Ray it starts: GCS, raylet, dashboard, Train controller and workers), sampled every 0.25 s. Shared
pages are counted once per process, so this is an upper bound.

    python bench/trial_cost.py --config configs/train-minilm-scifact.yaml [--set model.num_experts=0 ...]
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import psutil

from sbmoe_ray.cli import format_table
from sbmoe_ray.metrics import METRICS
from sbmoe_ray.train import fit, load_train_config


class PeakTreeMemory(threading.Thread):
    def __init__(self, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak, self._stopped = interval, 0, threading.Event()

    def run(self) -> None:
        root = psutil.Process()
        while not self._stopped.is_set():
            total = 0
            for proc in [root, *root.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stopped.wait(self.interval)

    def stop(self) -> int:
        self._stopped.set()
        self.join()
        return self.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    config = load_train_config(Path(args.config), args.set)
    memory = PeakTreeMemory()
    memory.start()
    start = time.perf_counter()
    result = fit(config)
    wall = time.perf_counter() - start
    peak = memory.stop()
    print(f"\n{config.name}: {config.model.base_model} N={config.model.num_experts} k={config.model.top_k} "
          f"workers={config.num_workers} batch={config.batch_size} precision={config.precision} "
          f"gradient_checkpointing={config.gradient_checkpointing} frozen={config.frozen}")
    for row in result.history:
        print(f"  epoch {row['epoch']}: train {row['train_seconds']:.1f} s ({row['pairs_per_second']:.1f} pairs/s, "
              f"median step {row['step_seconds_median']:.2f} s), train_loss {row['train_loss']:.4f}, "
              f"val_loss {row.get('val_loss', float('nan')):.4f}")
    for r in result.test:
        print(f"  evaluation {r.dataset}: {r.seconds['total']:.1f} s")
    print(f"  whole run: {wall:.1f} s wall, peak memory {peak / 2**30:.2f} GiB (all processes)")
    rows = [{"dataset": r.dataset, **r.metrics.means} for r in result.test]
    print(format_table(rows, ["dataset", *METRICS]))


if __name__ == "__main__":
    main()
