"""The README's tables of a finished study: every trial, and baseline vs the best trial by the objective.

    python docs/study_table.py results/studies/experts-sweep
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sbmoe_ray.metrics import paired_t_test
from sbmoe_ray.results import baselines, best_trial, load_trials


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
    paired = baselines(records)
    for model in sorted(paired):
        best = best_trial([r for r in records if r.base_model == model], mode)
        cells = []
        for d in datasets:
            test = paired_t_test(paired[model].per_query(d), best.per_query(d))
            cells.append(f"{paired[model].mean(d):.3f} → {best.mean(d):.3f} ({test.delta:+.3f}, p {test.p_value:.2g})")
        print(f"| {model} | {best.trial_id} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
