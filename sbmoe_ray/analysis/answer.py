"""A stage's answer per base model: what validation prefers, and what the test sets say about it.

Per base model, validation (the mean objective over seeds, never a test metric) ranks every configuration,
the baseline included: the answer may be "the baseline" (no SB-MoE head), and it says so. The claim the
test sets check is always the same one, fixed before any test result: the SB-MoE configuration validation
chose against the baseline, on every test set (the confirmatory family of
:mod:`sbmoe_ray.analysis.comparisons`). :func:`aa_rates` is a sanity check on the study's own
results: replicate i against replicate j of the same configuration, where every rejection is false.
"""

from __future__ import annotations

from sbmoe_ray.analysis.comparisons import CONFIRMATORY, CORRECTIONS, Comparison
from sbmoe_ray.analysis.inference import MIN_SEEDS, aa_check
from sbmoe_ray.analysis.records import ConfigGroup, baselines, best_group, best_overall, preferred_group
from sbmoe_ray.analysis.routing import routing_summary
from sbmoe_ray.analysis.summary import Answer, Chosen, StageSummary
from sbmoe_ray.study.claims import ClaimsConfig
from sbmoe_ray.study.space import label


def claimed_keys(groups: list[ConfigGroup], mode: str) -> set[str]:
    """The configurations the answer is about: per base model, the SB-MoE one validation chose."""
    chosen = (best_group([g for g in groups if g.base_model == m], mode) for m in {g.base_model for g in groups})
    return {g.key for g in chosen if g is not None}


def aa_rates(groups: list[ConfigGroup], datasets: list[str], alpha: float, metric: str = "ndcg@10") -> dict:
    """Rejection rates of the combined and the query-only test over every pair of replicates of the same
    configuration, every configuration and test set (the null holds for each pair)."""
    replicates = {}
    for group in (g for g in groups if len(g.records) >= 2):
        for dataset in (d for d in datasets if group.tested_on(d)):
            replicates[(group.key, dataset)] = [r.per_query(dataset, metric) for r in group.records]
    return aa_check(replicates, alpha)


def method_text(claims: ClaimsConfig, family: int) -> str:
    return (f"per query, the metric averaged over each side's seeds; Δ with queries and seeds counted together "
            f"(the seed variance component of the two compared arms, without the seed x query interaction "
            f"the replicate means carry; Welch-Satterthwaite df); claims need >= {MIN_SEEDS} seeds per arm; p and "
            f"TOST p (margin ±{claims.margin:g}) adjusted over the {family} per-collection comparisons of the chosen "
            f"configuration ({CORRECTIONS[claims.correction]}, statsmodels); "
            f"minimum detectable effect at {claims.power:.0%} power; the query-only paired t-test (scipy) beside it")


def study_summary(groups: list[ConfigGroup], comparisons: list[Comparison], datasets: list[str], mode: str,
                  objective: str, budget: dict, claims: ClaimsConfig) -> StageSummary:
    """The stage's answer per base model (``report/summary.json``): what validation prefers (``preferred``:
    "sb-moe" or "baseline"), the SB-MoE configuration it chose (``chosen``), and that configuration's
    confirmatory comparisons with the baseline on every dataset. ``budget``: what the stage spent
    (configurations, seeds, epochs)."""
    by_key = {(c.group, c.dataset): c for c in comparisons if c.family == CONFIRMATORY}
    answers, paired, chosen_keys = [], baselines(groups), {}
    for base_model in sorted({g.base_model for g in groups}):
        mine = [g for g in groups if g.base_model == base_model]
        chosen, preferred, base = best_group(mine, mode), preferred_group(mine, mode), paired.get(base_model)
        if chosen is None:
            continue
        chosen_keys[base_model] = chosen.key
        answers.append(Answer(
            base_model, len(mine), "baseline" if preferred is not None and preferred.is_baseline else "sb-moe",
            bool(preferred is not None and preferred.is_baseline and best_overall(mine, mode) is not preferred),
            base.objective if base is not None else float("nan"),
            Chosen(chosen.key, label(chosen.params), chosen.params, chosen.seeds,
                   [r.trial_id for r in chosen.records], chosen.objective, objective),
            {d: by_key[(chosen.key, d)] for d in datasets if (chosen.key, d) in by_key}))
    trials = sum(len(g.records) for g in groups)
    family = sum(c.family == CONFIRMATORY for c in comparisons)
    return StageSummary(objective, {**budget, "configurations": len(groups), "trials": trials}, len(comparisons),
                        family, claims.correction, claims.alpha, claims.margin, method_text(claims, family),
                        aa_rates(groups, datasets, claims.alpha) if all(g.tested for g in groups) else None,
                        answers, routing_summary(groups, chosen_keys, datasets))
