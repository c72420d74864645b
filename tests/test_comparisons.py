"""Comparisons with the baseline: Δ, interval and p equal scipy's paired t-test; adjusted p-values are
statsmodels' own and never below the raw ones; the study's machine-readable summary has its schema."""

from __future__ import annotations

import random

import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from sbmoe_ray.comparisons import compare_trials, paired, study_summary
from sbmoe_ray.results import TrialRecord


def record(trial_id: str, base_model: str, num_experts: int, scores: dict[str, dict[str, float]],
           objective: float = float("nan")) -> TrialRecord:
    test = [{"dataset": d, "metrics": {"ndcg@10": sum(s.values()) / len(s)}, "per_query": {"ndcg@10": s}}
            for d, s in scores.items()]
    params = {"base_model": base_model, "num_experts": num_experts}
    if num_experts:
        params.update(top_k=1, inference="top_k", moe_lr=1e-3)
    return TrialRecord(trial_id, params, "val_loss", {"val_loss": objective}, test, [], "cached_head")


def study(seed: int = 0) -> list[TrialRecord]:
    rng = random.Random(seed)
    queries = [f"q{i}" for i in range(40)]
    base = {d: {q: rng.random() for q in queries} for d in ("a", "b")}
    records = [record("base", "m", 0, base)]
    for i, shift in enumerate((0.0, 0.05, 0.2)):
        scores = {d: {q: min(1.0, v + shift + rng.gauss(0, 0.05)) for q, v in s.items()} for d, s in base.items()}
        records.append(record(f"t{i}", "m", 3, scores, objective=1.0 - shift))
    return records


def test_the_paired_difference_is_scipys_t_test():
    rng = random.Random(1)
    a = {f"q{i}": rng.random() for i in range(30)}
    b = {q: v + rng.gauss(0.03, 0.1) for q, v in a.items()}
    delta, low, high, p, d_z, n = paired(a, b)
    reference = stats.ttest_rel(list(b.values()), list(a.values()))
    assert p == pytest.approx(reference.pvalue) and (low, high) == pytest.approx(tuple(reference.confidence_interval()))
    assert low < delta < high and n == 30 and d_z == pytest.approx(delta / stats.tstd([b[q] - a[q] for q in a]))
    assert paired(a, a)[3] == 1.0


@pytest.mark.parametrize("correction", ["holm", "fdr_bh"])
def test_adjusted_p_values_are_the_librarys_and_never_below_the_raw_ones(correction):
    comparisons = compare_trials(study(), ["a", "b"], correction=correction)
    assert len(comparisons) == 6                                     # 3 trials x 2 datasets
    raw = [c.p_raw for c in comparisons]
    assert [c.p_adjusted for c in comparisons] == pytest.approx(list(multipletests(raw, method=correction)[1]))
    assert all(c.p_adjusted >= c.p_raw for c in comparisons)


def test_the_summary_names_the_configuration_chosen_by_validation_and_its_test_comparison():
    summary = study_summary(study(), ["a", "b"], mode="min", objective="val_loss")
    assert summary["comparisons"] == 6 and summary["seeds"] == 1 and summary["correction"] == "holm"
    (answer,) = summary["per_base_model"]
    assert answer["chosen"]["trial_id"] == "t2"                      # the lowest validation loss, not a test pick
    for dataset, c in answer["datasets"].items():
        assert set(c) >= {"baseline_mean", "moe_mean", "delta", "ci_low", "ci_high", "p_raw", "p_adjusted",
                          "effect_size", "queries"}
        assert c["ci_low"] <= c["delta"] <= c["ci_high"] and c["p_adjusted"] >= c["p_raw"]
