"""SB-MoE configurations against their base model's baseline: paired differences, intervals, corrected p.

Per dataset and SB-MoE configuration (all its replicates, :class:`~sbmoe_ray.analysis.records.ConfigGroup`):

* Δ: the mean over test queries of (configuration − baseline), each query's metric first averaged over
  the replicates (training seeds) of each side;
* its 95 % confidence interval and the two-sided p-value of a paired t-test over those queries
  (``scipy.stats.ttest_rel``; the test the paper uses), and the effect size d_z = mean(diff) / sd(diff);
* the spread over training seeds: Δ of each replicate against the baseline's mean, and, with two or more
  seeds, the 95 % t-interval of their mean (``scipy.stats.ttest_1samp``). The query interval says how
  sure we are for these queries; the seed interval how much another training run would move Δ. A
  difference worth claiming has both intervals away from 0.

A study makes many such comparisons (every configuration it tried, on every test set), so p is adjusted
over all of them: Holm–Bonferroni by default (family-wise error), Benjamini–Hochberg as an option (false
discovery rate), both from ``statsmodels``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

from sbmoe_ray.analysis.records import ConfigGroup, baselines, best_group
from sbmoe_ray.study.space import label

CORRECTIONS = {"holm": "Holm-Bonferroni", "fdr_bh": "Benjamini-Hochberg"}


@dataclass
class Comparison:
    base_model: str
    group: str                  # the configuration's key (results.group_key)
    dataset: str
    baseline_mean: float
    moe_mean: float
    delta: float
    ci_low: float
    ci_high: float
    p_raw: float
    p_adjusted: float
    effect_size: float          # d_z: mean(diff) / sd(diff)
    queries: int
    seeds: int
    delta_per_seed: list[float] = field(default_factory=list)
    seed_ci_low: float = math.nan     # 95 % t-interval of the mean Δ over seeds (NaN with one seed)
    seed_ci_high: float = math.nan
    trial_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def paired(baseline: dict[str, float], moe: dict[str, float]) -> tuple[float, float, float, float, float, int]:
    """Δ, 95 % interval, p (paired t) and d_z over the queries both runs scored."""
    common = sorted(set(baseline) & set(moe))
    diff = np.array([moe[q] - baseline[q] for q in common])
    if len(common) < 2:
        raise ValueError(f"a paired comparison needs >= 2 common queries, got {len(common)}")
    if not diff.any():
        return 0.0, 0.0, 0.0, 1.0, 0.0, len(common)
    test = stats.ttest_rel([moe[q] for q in common], [baseline[q] for q in common])
    low, high = test.confidence_interval(0.95)
    sd = diff.std(ddof=1)
    p = float(test.pvalue) if not math.isnan(test.pvalue) else 1.0
    return float(diff.mean()), float(low), float(high), p, float(diff.mean() / sd) if sd > 0 else 0.0, len(common)


def seed_interval(deltas: list[float]) -> tuple[float, float]:
    """95 % t-interval of the mean of the per-seed Δ; NaN with fewer than two seeds."""
    if len(deltas) < 2:
        return math.nan, math.nan
    if np.ptp(deltas) == 0:
        return float(deltas[0]), float(deltas[0])
    low, high = stats.ttest_1samp(deltas, 0.0).confidence_interval(0.95)
    return float(low), float(high)


def adjust(p_values: list[float], correction: str = "holm") -> list[float]:
    """p-values adjusted over the family (statsmodels ``multipletests``)."""
    from statsmodels.stats.multitest import multipletests

    if not p_values:
        return []
    return [float(p) for p in multipletests(p_values, method=correction)[1]]


def compare(group: ConfigGroup, base: ConfigGroup, dataset: str, metric: str = "ndcg@10") -> Comparison:
    """One configuration against its baseline on one dataset (p not yet adjusted)."""
    base_queries = base.per_query(dataset, metric)
    delta, low, high, p, d_z, n = paired(base_queries, group.per_query(dataset, metric))
    per_seed = []
    for record in group.records:
        mine = record.per_query(dataset, metric)
        common = [q for q in base_queries if q in mine]
        per_seed.append(float(np.mean([mine[q] - base_queries[q] for q in common])))
    seed_low, seed_high = seed_interval(per_seed)
    return Comparison(group.base_model, group.key, dataset, base.mean(dataset, metric), group.mean(dataset, metric),
                      delta, low, high, p, p, d_z, n, len(group.records), per_seed, seed_low, seed_high,
                      [r.trial_id for r in group.records])


def compare_groups(groups: list[ConfigGroup], datasets: list[str], metric: str = "ndcg@10",
                   correction: str = "holm") -> list[Comparison]:
    """Every SB-MoE configuration that has a baseline, on every dataset, p adjusted over all of them."""
    paired_baselines, rows = baselines(groups), []
    for group in groups:
        base = paired_baselines.get(group.base_model)
        if not group.is_baseline and base is not None:
            rows += [compare(group, base, dataset, metric) for dataset in datasets]
    for row, p_adjusted in zip(rows, adjust([r.p_raw for r in rows], correction)):
        row.p_adjusted = p_adjusted
    return rows


def study_summary(groups: list[ConfigGroup], comparisons: list[Comparison], datasets: list[str], mode: str,
                  objective: str, budget: dict, correction: str = "holm") -> dict:
    """The stage's answer per base model, machine-readable (``report/summary.json``): the configuration
    chosen by its mean validation objective over seeds, and its test comparison with the baseline on every
    dataset (from ``comparisons``: :func:`compare_groups` over the same groups). ``budget``: what the stage
    spent (configurations, seeds, epochs)."""
    by_key = {(c.group, c.dataset): c for c in comparisons}
    answers = []
    for base_model in sorted({g.base_model for g in groups}):
        mine = [g for g in groups if g.base_model == base_model]
        chosen = best_group(mine, mode)
        if chosen is None:
            continue
        answers.append({"base_model": base_model, "configurations": len(mine), "chosen": {
            "group": chosen.key, "config": label(chosen.params), "params": chosen.params, "seeds": chosen.seeds,
            "trial_ids": [r.trial_id for r in chosen.records], objective: chosen.objective},
            "datasets": {d: by_key[(chosen.key, d)].to_dict() for d in datasets if (chosen.key, d) in by_key}})
    trials = sum(len(g.records) for g in groups)
    return {"objective": objective, "budget": {**budget, "configurations": len(groups), "trials": trials},
            "comparisons": len(comparisons), "correction": correction,
            "method": (f"per query, the metric averaged over each side's seeds; paired t-test over test queries "
                       f"(scipy), 95 % interval of the mean difference; p adjusted over all {len(comparisons)} "
                       f"SB-MoE-vs-baseline comparisons ({CORRECTIONS[correction]}, statsmodels); seed interval: "
                       "95 % t-interval of the per-seed differences"),
            "per_base_model": answers}
