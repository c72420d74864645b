"""SB-MoE trials against their base model's baseline: paired differences, intervals, corrected p-values.

Per dataset and SB-MoE configuration, over the test queries both runs scored: the mean difference of the
per-query metric (Δ), its 95 % confidence interval and the two-sided p-value of a paired t-test
(``scipy.stats.ttest_rel``; the test the paper uses), and the effect size d_z = mean(diff) / sd(diff). A
study makes many such comparisons (every configuration it tried, on every test set), so p is also adjusted
over all of them: Holm–Bonferroni by default (controls the family-wise error), Benjamini–Hochberg as an
option (controls the false discovery rate), both from ``statsmodels``. With one seed per configuration the
interval covers query sampling only, not training randomness.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from sbmoe_ray.results import TrialRecord, baselines

CORRECTIONS = {"holm": "Holm-Bonferroni", "fdr_bh": "Benjamini-Hochberg"}


@dataclass
class Comparison:
    base_model: str
    trial_id: str
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


def adjust(p_values: list[float], correction: str = "holm") -> list[float]:
    """p-values adjusted over the family (statsmodels ``multipletests``)."""
    from statsmodels.stats.multitest import multipletests

    if not p_values:
        return []
    return [float(p) for p in multipletests(p_values, method=correction)[1]]


def compare_trials(records: list[TrialRecord], datasets: list[str], metric: str = "ndcg@10",
                   correction: str = "holm") -> list[Comparison]:
    """Every SB-MoE trial that has a baseline, on every dataset, p adjusted over all of them."""
    paired_baselines, rows = baselines(records), []
    for record in records:
        base = paired_baselines.get(record.base_model)
        if record.is_baseline or base is None:
            continue
        for dataset in datasets:
            delta, low, high, p, d_z, n = paired(base.per_query(dataset, metric), record.per_query(dataset, metric))
            rows.append(Comparison(record.base_model, record.trial_id, dataset, base.mean(dataset, metric),
                                   record.mean(dataset, metric), delta, low, high, p, p, d_z, n))
    for row, p_adjusted in zip(rows, adjust([r.p_raw for r in rows], correction)):
        row.p_adjusted = p_adjusted
    return rows


def study_summary(records: list[TrialRecord], datasets: list[str], mode: str, objective: str,
                  correction: str = "holm") -> dict:
    """The study's answer per base model, machine-readable (``report/summary.json``): the configuration
    chosen by the validation objective, and its test comparison with the baseline on every dataset."""
    from sbmoe_ray.results import best_trial
    from sbmoe_ray.search_space import describe

    comparisons = compare_trials(records, datasets, correction=correction)
    by_key = {(c.trial_id, c.dataset): c for c in comparisons}
    answers = []
    for base_model in sorted({r.base_model for r in records}):
        mine = [r for r in records if r.base_model == base_model]
        chosen = best_trial(mine, mode)
        if chosen is None:
            continue
        answers.append({"base_model": base_model, "trials": len(mine), "chosen": {
            "trial_id": chosen.trial_id, "config": describe(chosen.params), "params": chosen.params,
            objective: chosen.objective},
            "datasets": {d: by_key[(chosen.trial_id, d)].to_dict() for d in datasets if (chosen.trial_id, d) in by_key}})
    return {"objective": objective, "seeds": 1, "trials": len(records), "comparisons": len(comparisons),
            "method": f"paired t-test over test queries (scipy), 95 % interval of the mean difference; p adjusted "
                      f"over all {len(comparisons)} SB-MoE-vs-baseline comparisons ({CORRECTIONS[correction]}, "
                      "statsmodels)", "correction": correction, "per_base_model": answers}
