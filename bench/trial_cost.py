"""Cost and result of one real trial: ``fit`` on a config, with the whole run's peak memory.

Peak memory is taken over this process and all its descendants (the local Ray it starts: GCS, raylet,
dashboard, Train controller and workers, the evaluation task), sampled every 0.5 s: PSS (shared pages
split between the processes that map them) and summed RSS (an upper bound).

    python bench/trial_cost.py --config configs/train-minilm-scifact.yaml [--set model.num_experts=0 ...]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import psutil

from sbmoe_ray.analysis.records import format_table
from sbmoe_ray.evaluation.metrics import METRICS
from sbmoe_ray.train import fit, load_train_config


def process_group(proc: psutil.Process, root: psutil.Process) -> str:
    """Which part of the run a process is: the driver, a Ray worker (its task or actor), or Ray itself."""
    if proc.pid == root.pid:
        return "driver"
    title = (proc.cmdline() or [""])[0]          # Ray workers set it to ray::<actor or task>.<method>
    return title[len("ray::"):].split(".")[0].split(" ")[0] if title.startswith("ray::") else "ray system"


class PeakTreeMemory(threading.Thread):
    """Peak memory of this process and all its descendants, sampled every ``interval`` seconds.

    ``rss``: the sum of resident set sizes, an upper bound (a library mapped by 20 Ray processes, such as
    libtorch, counts 20 times). ``pss``: the sum of proportional set sizes, where a shared page counts
    1/n in each of the n processes that map it: the machine's memory actually used by the run.
    ``parts``: PSS by process group (:func:`process_group`) at the moment of the peak.
    """

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak_rss, self.peak_pss, self._stopped = interval, 0, 0, threading.Event()
        self.parts: dict[str, int] = {}

    def run(self) -> None:
        root = psutil.Process()
        while not self._stopped.is_set():
            rss, parts = 0, Counter()
            for proc in [root, *root.children(recursive=True)]:
                try:
                    info, group = proc.memory_full_info(), process_group(proc, root)
                except psutil.Error:
                    continue
                rss += info.rss
                parts[group] += getattr(info, "pss", info.rss)
            pss = sum(parts.values())
            if pss > self.peak_pss:
                self.peak_pss, self.parts = pss, dict(parts)
            self.peak_rss = max(self.peak_rss, rss)
            self._stopped.wait(self.interval)

    def stop(self) -> tuple[int, int]:
        self._stopped.set()
        self.join()
        return self.peak_pss, self.peak_rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    # A fresh storage folder: the same (storage_path, name) would resume a finished run and measure nothing.
    config = load_train_config(Path(args.config), args.set)
    config = replace(config, run=replace(config.run, storage_path=tempfile.mkdtemp(prefix="trial-cost-")))
    memory = PeakTreeMemory()
    memory.start()
    start = time.perf_counter()
    result = fit(config)
    wall = time.perf_counter() - start
    peak_pss, peak_rss = memory.stop()
    config = result.config
    print(f"\n{config.run.name}: {config.model.base_model} N={config.model.num_experts} k={config.model.top_k} "
          f"workers={config.scaling.num_workers} batch={config.optim.batch_size} precision={config.memory.precision} "
          f"gradient_checkpointing={config.memory.gradient_checkpointing} route={config.route}")
    for row in result.history:
        print(f"  epoch {row['epoch']}: train {row['train_seconds']:.1f} s ({row['pairs_per_second']:.1f} pairs/s, "
              f"median step {row['step_seconds_median']:.2f} s), train_loss {row['train_loss']:.4f}, "
              f"val_loss {row.get('val_loss', float('nan')):.4f}"
              + (f", GPU peak {row['cuda_peak_memory_gib']:.2f} GiB" if "cuda_peak_memory_gib" in row else ""))
    for r in result.test:
        print(f"  evaluation {r.dataset}: {r.seconds['total']:.1f} s on {r.device}")
    print(f"  whole run: {wall:.1f} s wall, peak memory of all processes {peak_pss / 2**30:.2f} GiB PSS "
          f"({peak_rss / 2**30:.2f} GiB summed RSS)")
    print("  at the peak, PSS by process: " + ", ".join(f"{group} {size / 2**30:.2f} GiB" for group, size in
                                                        sorted(memory.parts.items(), key=lambda kv: -kv[1])))
    rows = [{"dataset": r.dataset, **r.metrics.means} for r in result.test]
    print(format_table(rows, ["dataset", *METRICS]))


if __name__ == "__main__":
    main()
