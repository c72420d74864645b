"""The generalisation trade: in-domain validation against zero-shot validation, and its Pareto front.

A head trained on one collection can gain in-domain and lose on others (the default study's frozen
MiniLM does: large SciFact gains, NFCorpus losses). With ``train.data.zero_shot_validation`` set (e.g.
NFCorpus dev), every trial also reports the best checkpoint's nDCG@10 on that held-out collection
(``zs_val_ndcg@10``, a validation metric: never a test set), the study searches both objectives
(Optuna multi-objective TPE through ``OptunaSearch``'s metric list), and the report draws each
configuration's mean over seeds with the Pareto front: the configurations no other beats on both. A
user who must not trade zero-shot quality away picks from the front, not from the in-domain ranking.
"""

from __future__ import annotations

import math

from sbmoe_ray.analysis.records import ConfigGroup, baselines, nan_mean
from sbmoe_ray.evaluation.metrics import ZERO_SHOT_METRIC
from sbmoe_ray.study.space import label


def zero_shot_objective(group: ConfigGroup) -> float:
    """The mean over the replicates of the zero-shot validation nDCG@10 (NaN without one)."""
    return nan_mean(r.best_metrics.get(ZERO_SHOT_METRIC, math.nan) for r in group.records)


def _dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] >= b[0] and a[1] >= b[1] and a != b


def pareto_front(groups: list[ConfigGroup], mode: str) -> list[ConfigGroup]:
    """The SB-MoE configurations not dominated on (in-domain objective, zero-shot nDCG@10), best first."""
    sign = -1.0 if mode == "min" else 1.0
    points = {g.key: (sign * g.objective, zero_shot_objective(g)) for g in groups
              if not g.is_baseline and not math.isnan(g.objective) and not math.isnan(zero_shot_objective(g))}
    front = [g for g in groups if g.key in points
             and not any(_dominates(other, points[g.key]) for other in points.values())]
    return sorted(front, key=lambda g: -points[g.key][0])


def pareto_figure(groups: list[ConfigGroup], mode: str, objective: str, dataset: str):
    """One panel per base model: every configuration (mean over seeds), the front joined, the zero-shot
    baseline as a line; None without zero-shot validation values."""
    import matplotlib.pyplot as plt

    models = sorted({g.base_model for g in groups if not math.isnan(zero_shot_objective(g))})
    if not models:
        return None
    fig, axes = plt.subplots(1, len(models), squeeze=False, figsize=(4.6 * len(models), 3.6))
    for ax, model in zip(axes[0], models):
        mine = [g for g in groups if g.base_model == model and not g.is_baseline]
        ax.scatter([g.objective for g in mine], [zero_shot_objective(g) for g in mine], s=18, color="tab:gray",
                   label="configurations")
        front = pareto_front(mine, mode)
        ax.plot([g.objective for g in front], [zero_shot_objective(g) for g in front], "o-", color="tab:red",
                label="Pareto front")
        base = baselines(groups).get(model)
        if base is not None and not math.isnan(zero_shot_objective(base)):
            ax.axhline(zero_shot_objective(base), color="tab:blue", linestyle="--", label="baseline")
        ax.set_xlabel(f"{objective} (in-domain validation, {'lower' if mode == 'min' else 'higher'} is better)",
                      fontsize=8)
        ax.set_ylabel(f"{dataset} nDCG@10 (zero-shot validation)", fontsize=8)
        ax.set_title(model, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def pareto_summary(groups: list[ConfigGroup], mode: str, datasets: list[str]) -> dict[str, list[dict]]:
    """Per base model, the front's configurations: both validation values and their mean test nDCG@10
    (and the baseline's zero-shot validation value to compare with)."""
    out = {}
    for model in sorted({g.base_model for g in groups}):
        base = baselines(groups).get(model)
        out[model] = {"baseline_zero_shot_objective": zero_shot_objective(base) if base else math.nan, "front": [
            {"config": label(g.params), "group": g.key, "objective": g.objective,
             "zero_shot_objective": zero_shot_objective(g), "test_ndcg@10": {d: g.mean(d) for d in datasets}}
            for g in pareto_front([g for g in groups if g.base_model == model], mode)]}
    return out


def pareto_lines(summary: dict[str, dict], objective: str, dataset: str, datasets: list[str]) -> list[str]:
    """The report's section: the figure and, per base model, the front as a table."""
    lines = ["## Generalisation: in-domain vs zero-shot validation", "",
             f"Each configuration's mean over seeds of `{objective}` (in-domain) and nDCG@10 on `{dataset}` "
             "(zero-shot validation); the Pareto front holds the configurations no other beats on both. Test columns "
             "are for reading only: choose on the validation values.", "", "![pareto](pareto.png)", ""]
    for model, part in summary.items():
        header = ["config", objective, f"{dataset} (zs val)", *[f"{d} test" for d in datasets]]
        lines += [f"**{model}** (baseline zero-shot validation {part['baseline_zero_shot_objective']:.4f})", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join([p["config"], f"{p['objective']:.4f}", f"{p['zero_shot_objective']:.4f}",
                                     *[f"{p['test_ndcg@10'][d]:.4f}" for d in datasets]]) + " |" for p in part["front"]]
        lines.append("")
    return lines
