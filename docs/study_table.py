"""The results pages' tables of a finished study: every configuration (mean over its seeds), and baseline vs the
configuration chosen by the mean validation objective.

    python docs/study_table.py results/studies/experts-sweep
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sbmoe_ray.analysis.records import load_trials
from sbmoe_ray.analysis.result import analyze_proxy
from sbmoe_ray.study.config import load_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path)
    args = parser.parse_args()
    study = load_study(args.study)
    datasets = study.test_names
    result = analyze_proxy(study, load_trials(study.layout.proxy))
    groups = sorted(result.groups, key=lambda g: (
        g.base_model, g.params["num_experts"], g.params.get("top_k", 0), g.params.get("moe_lr", 0)))
    print("| base | N | train k | inference | moe_lr | seeds | objective | " + " | ".join(datasets) + " |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(datasets))
    for g in groups:
        head = ([g.base_model, "0 (baseline)", "-", "-", "", len(g.records), ""] if g.is_baseline else
                [g.base_model, g.params["num_experts"], g.params["top_k"], g.params["inference"],
                 f"{g.params['moe_lr']:.1e}", len(g.records), f"{g.objective:.3f}"])
        print("| " + " | ".join(map(str, head + [f"{g.mean(d):.3f}" for d in datasets])) + " |")
    print()
    summary = result.summary
    for answer in summary["per_base_model"]:
        cells = []
        for c in (answer["datasets"][d] for d in datasets):
            seed = "" if c["seeds"] < 2 else f"; seeds [{c['seed_ci_low']:+.3f}, {c['seed_ci_high']:+.3f}]"
            cells.append(f"{c['baseline_mean']:.3f} → {c['moe_mean']:.3f} ({c['delta']:+.3f} [{c['ci_low']:+.3f}, "
                         f"{c['ci_high']:+.3f}]{seed}; p {c['p_raw']:.1g}, adj. {c['p_adjusted']:.1g})")
        print(f"| {answer['base_model']} | {answer['chosen']['config']} | " + " | ".join(cells) + " |")
    print(f"\n{summary['method']}")


if __name__ == "__main__":
    main()
