"""SB-MoE configurations against their base model's baseline: Δ over queries and seeds, equivalence, power.

Per dataset and SB-MoE configuration (all its replicates, :class:`~sbmoe_ray.analysis.records.ConfigGroup`),
against its base model's baseline group (all *its* replicates):

* Δ: the mean over test queries of (configuration − baseline), each query's metric averaged over each
  side's replicates (training seeds);
* its 95 % interval and two-sided p with queries and seeds counted together
  (:func:`sbmoe_ray.analysis.inference.combined`: the seed variance component of the two compared arms,
  :mod:`sbmoe_ray.analysis.components`), and the query-only interval and p of the paired t-test
  (``scipy.stats.ttest_rel``, the test the SB-MoE paper uses) beside it;
* TOST against ``analysis.margin`` and the minimum detectable effect at ``analysis.power``;
* the verdict: ``better`` / ``worse`` (adjusted p < α, both arms with >= 3 seeds), ``equivalent``
  (adjusted TOST p < α, same seeds rule), ``seed variance not estimated`` (an arm has < 3 seeds: nothing
  is claimed on query evidence alone), else ``inconclusive``.

The confirmatory family (:mod:`sbmoe_ray.study.claims`) is the chosen configuration per base model on every
test set; p and TOST p are adjusted over it (Holm by default, statsmodels). Every other comparison is
``exploratory``, adjusted over its own family, and never part of the answer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

from sbmoe_ray.analysis.inference import MIN_SEEDS, combined
from sbmoe_ray.analysis.records import ConfigGroup, baselines
from sbmoe_ray.study.claims import ClaimsConfig

CORRECTIONS = {"holm": "Holm-Bonferroni", "fdr_bh": "Benjamini-Hochberg"}
CONFIRMATORY, EXPLORATORY, ATTRIBUTION = "confirmatory", "exploratory", "attribution"


@dataclass
class Comparison:
    base_model: str
    group: str                  # the configuration's key (results.group_key)
    dataset: str
    baseline_mean: float
    moe_mean: float
    delta: float
    ci_low: float               # queries and seeds together
    ci_high: float
    p_raw: float
    p_adjusted: float
    effect_size: float          # d_z over queries: mean(diff) / sd(diff)
    queries: int
    seeds: int                  # replicates of the configuration
    baseline_seeds: int = 1
    query_ci_low: float = math.nan    # the paired t-test over queries alone (seeds ignored)
    query_ci_high: float = math.nan
    query_p: float = math.nan
    se: float = math.nan
    df: float = math.nan
    seed_df: float = 0.0        # Satterthwaite df of the seed variance component (0: none estimated)
    seeds_estimated: bool = False
    tost_p: float = math.nan
    tost_p_adjusted: float = math.nan
    margin: float = math.nan
    mde: float = math.nan       # minimum detectable |Δ| at the declared power
    family: str = EXPLORATORY
    verdict: str = ""
    delta_per_seed: list[float] = field(default_factory=list)   # each replicate against the baseline's mean
    trial_ids: list[str] = field(default_factory=list)
    against: str = "baseline"   # or an attribution control: dense_adapter, random_routing

    def to_dict(self) -> dict:
        return asdict(self)


def paired(baseline: dict[str, float], moe: dict[str, float]) -> tuple[float, float, float, float, float, int]:
    """Δ, 95 % interval, p (paired t over queries) and d_z over the queries both runs scored."""
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
    """p-values adjusted over the family (statsmodels ``multipletests``). Its Holm branch calls ``gc.collect()``
    on every call (statsmodels 0.15, ``stats/multitest.py``), which scans every object of a driver that holds
    torch, Ray and MLflow. The objects alive are frozen for the call (``gc.freeze``, the standard library's way
    to keep long-lived objects out of collections), so it scans only its own."""
    import gc

    from statsmodels.stats.multitest import multipletests

    if not p_values:
        return []
    gc.freeze()
    try:
        return [float(p) for p in multipletests(p_values, method=correction)[1]]
    finally:
        gc.unfreeze()


def compare(group: ConfigGroup, base: ConfigGroup, dataset: str, claims: ClaimsConfig,
            metric: str = "ndcg@10") -> Comparison:
    """One configuration against its baseline on one dataset (p not yet adjusted, no verdict yet)."""
    base_runs = [r.per_query(dataset, metric) for r in base.records]
    mine = [r.per_query(dataset, metric) for r in group.records]
    estimate = combined(mine, base_runs)
    base_queries = base.per_query(dataset, metric)
    _, q_low, q_high, q_p, d_z, _ = paired(base_queries, group.per_query(dataset, metric))
    per_seed = [float(np.mean([run[q] - base_queries[q] for q in base_queries if q in run])) for run in mine]
    return Comparison(group.base_model, group.key, dataset, base.mean(dataset, metric), group.mean(dataset, metric),
                      estimate.delta, estimate.low, estimate.high, estimate.p, estimate.p, d_z, estimate.queries,
                      len(mine), len(base_runs), q_low, q_high, q_p, estimate.se, estimate.df, estimate.seed_df,
                      estimate.seeds_estimated, estimate.tost(claims.margin), math.nan, claims.margin,
                      estimate.mde(claims.alpha, claims.power), delta_per_seed=per_seed,
                      trial_ids=[r.trial_id for r in group.records])


def verdict(row: Comparison, alpha: float) -> str:
    if not row.seeds_estimated:
        return f"seed variance not estimated (< {MIN_SEEDS} seeds per arm)"
    if row.p_adjusted < alpha:
        return "better" if row.delta > 0 else "worse"
    if row.tost_p_adjusted < alpha:
        return f"equivalent within ±{row.margin:g}"
    return f"inconclusive (detectable: ±{row.mde:.3f})"


def compare_groups(groups: list[ConfigGroup], datasets: list[str], claimed: set[str], claims: ClaimsConfig,
                   metric: str = "ndcg@10") -> list[Comparison]:
    """Every SB-MoE configuration that has a baseline, on every dataset; ``claimed``: the keys of the
    configurations the answer is about (the confirmatory family), adjusted apart from the rest."""
    paired_baselines, rows = baselines(groups), []
    for group in groups:
        base = paired_baselines.get(group.base_model)
        if not group.is_baseline and base is not None:
            rows += [compare(group, base, d, claims, metric) for d in datasets
                     if group.tested_on(d) and base.tested_on(d)]
    for family in (CONFIRMATORY, EXPLORATORY):
        adjust_family([r for r in rows if (r.group in claimed) == (family == CONFIRMATORY)], family, claims)
    return rows


def adjust_family(members: list[Comparison], family: str, claims: ClaimsConfig) -> None:
    """p and TOST p adjusted over one family, and each member's verdict."""
    for row, p, tost in zip(members, adjust([r.p_raw for r in members], claims.correction),
                            adjust([r.tost_p for r in members], claims.correction)):
        row.family, row.p_adjusted, row.tost_p_adjusted = family, p, tost
        row.verdict = verdict(row, claims.alpha)

