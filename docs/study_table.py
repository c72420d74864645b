"""The README's tables of a finished study: every trial, and baseline vs the best trial by the objective.

    python docs/study_table.py results/studies/experts-sweep
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sbmoe_ray.comparisons import study_summary
from sbmoe_ray.results import load_trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path)
    args = parser.parse_args()
    config = json.loads((args.study / "study_config.json").read_text())
    datasets = [Path(d).name for d in config["train"]["data"]["test_datasets"]]
    mode = "max" if config["search"]["objective"] != "val_loss" else "min"
    records = sorted(load_trials(args.study), key=lambda r: (r.base_model, r.params["num_experts"],
                                                             r.params.get("top_k", 0), r.params.get("moe_lr", 0)))
    print("| base | N | train k | inference | moe_lr | objective | " + " | ".join(datasets) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(datasets))
    for r in records:
        head = ([r.base_model, "0 (baseline)", "-", "-", "", ""] if r.is_baseline else
                [r.base_model, r.params["num_experts"], r.params["top_k"], r.params["inference"],
                 f"{r.params['moe_lr']:.1e}", f"{r.objective:.3f}"])
        print("| " + " | ".join(map(str, head + [f"{r.mean(d):.3f}" for d in datasets])) + " |")
    print()
    summary = study_summary(records, datasets, mode, config["search"]["objective"])
    for answer in summary["per_base_model"]:
        cells = [f"{c['baseline_mean']:.3f} → {c['moe_mean']:.3f} ({c['delta']:+.3f} [{c['ci_low']:+.3f}, "
                 f"{c['ci_high']:+.3f}], p {c['p_raw']:.1g}, adj. {c['p_adjusted']:.1g})"
                 for c in (answer["datasets"][d] for d in datasets)]
        print(f"| {answer['base_model']} | {answer['chosen']['config']} | " + " | ".join(cells) + " |")
    print(f"\n{summary['method']}")

if __name__ == "__main__":
    main()
