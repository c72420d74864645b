"""Learning curves of `sbmoe train` runs: validation loss and nDCG@10 against optimizer steps, with the step
where each flattened (:func:`sbmoe_ray.analysis.curves.flattened_step`), from the runs' progress logs.

    python bench/convergence_curves.py RUN_DIR [RUN_DIR ...] --out docs/results/figures/convergence.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sbmoe_ray.analysis.curves import flattened_step  # noqa: E402
from sbmoe_ray.runtime.hardware import describe_machine  # noqa: E402
from sbmoe_ray.train.session import epoch_history  # noqa: E402


def points(history: list[dict], metric: str) -> list[tuple[int, float]]:
    return [(row["steps_done"], row[metric]) for row in history if metric in row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps-per-epoch", type=int, default=11, help="for runs that did not log steps_done")
    args = parser.parse_args()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for run in args.runs:
        history = epoch_history(run)
        for row in history:
            row.setdefault("steps_done", (row["epoch"] + 1) * args.steps_per_epoch)
        for ax, metric, mode in ((axes[0], "val_loss", "min"), (axes[1], "val_ndcg@10", "max")):
            curve = points(history, metric)
            flat = flattened_step(curve, mode)
            ax.plot(*zip(*curve), marker=".", label=f"{run.name} (flat: {flat or 'not yet'})")
            print(f"{run.name:24s} {metric:12s} " + "  ".join(f"{s}:{v:.4f}" for s, v in curve)
                  + f"   flattened at step {flat}")
    for ax, metric in zip(axes, ("validation loss", "validation nDCG@10 (positives + 500 docs)")):
        ax.set_xlabel("optimizer steps (batch 64)")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
    fig.suptitle(f"SciFact fine-tuning, 2 Ray Train workers, {describe_machine()}", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
