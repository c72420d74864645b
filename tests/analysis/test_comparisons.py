"""Comparisons with the baseline: Δ, interval and p equal scipy's paired t-test on the seed-averaged
queries; the seed interval is scipy's one-sample t-interval of the per-seed Δ; adjusted p-values are
statsmodels' own and never below the raw ones; the configuration is chosen by its mean validation objective
over seeds; the study's machine-readable summary has its schema."""

from __future__ import annotations

import random

import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from sbmoe_ray.analysis.comparisons import compare_groups, paired, study_summary
from sbmoe_ray.analysis.records import group_trials

from helpers import study

BUDGET = {"configurations_planned": 4, "seeds": 3, "epochs": 2}


def test_the_paired_difference_is_scipys_t_test():
    rng = random.Random(1)
    a = {f"q{i}": rng.random() for i in range(30)}
    b = {q: v + rng.gauss(0.03, 0.1) for q, v in a.items()}
    delta, low, high, p, d_z, n = paired(a, b)
    reference = stats.ttest_rel(list(b.values()), list(a.values()))
    assert p == pytest.approx(reference.pvalue) and (low, high) == pytest.approx(tuple(reference.confidence_interval()))
    assert low < delta < high and n == 30 and d_z == pytest.approx(delta / stats.tstd([b[q] - a[q] for q in a]))
    assert paired(a, a)[3] == 1.0


def test_replicates_are_grouped_by_configuration_and_averaged_per_query():
    groups = group_trials(study())
    assert [len(g.records) for g in groups] == [3, 3, 3, 3] and [g.seeds for g in groups][1] == [0, 1, 2]
    g = groups[1]
    q = "q7"
    assert g.per_query("a")[q] == pytest.approx(sum(r.per_query("a")[q] for r in g.records) / 3)


def test_the_comparison_over_seeds_is_scipys_on_seed_means_with_a_seed_interval():
    groups = group_trials(study())
    comparison = compare_groups(groups, ["a"])[1]                    # shift 0.05 vs the baseline
    base, moe = groups[0].per_query("a"), groups[2].per_query("a")
    reference = stats.ttest_rel([moe[q] for q in base], [base[q] for q in base])
    assert comparison.p_raw == pytest.approx(reference.pvalue) and comparison.seeds == 3
    per_seed = [sum(r.per_query("a")[q] - base[q] for q in base) / len(base) for r in groups[2].records]
    assert comparison.delta_per_seed == pytest.approx(per_seed)
    low, high = stats.ttest_1samp(per_seed, 0.0).confidence_interval(0.95)
    assert (comparison.seed_ci_low, comparison.seed_ci_high) == pytest.approx((low, high))
    assert comparison.trial_ids == ["t1-s0", "t1-s1", "t1-s2"]


@pytest.mark.parametrize("correction", ["holm", "fdr_bh"])
def test_adjusted_p_values_are_the_librarys_and_never_below_the_raw_ones(correction):
    comparisons = compare_groups(group_trials(study()), ["a", "b"], correction=correction)
    assert len(comparisons) == 6                                     # 3 configurations x 2 datasets
    raw = [c.p_raw for c in comparisons]
    assert [c.p_adjusted for c in comparisons] == pytest.approx(list(multipletests(raw, method=correction)[1]))
    assert all(c.p_adjusted >= c.p_raw for c in comparisons)


def test_the_summary_names_the_configuration_chosen_by_mean_validation_and_its_test_comparison():
    groups = group_trials(study())
    summary = study_summary(groups, compare_groups(groups, ["a", "b"]), ["a", "b"], mode="min", objective="val_loss",
                            budget=BUDGET)
    assert summary["comparisons"] == 6 and summary["correction"] == "holm"
    assert summary["budget"] == {**BUDGET, "configurations": 4, "trials": 12}
    (answer,) = summary["per_base_model"]
    assert answer["chosen"]["trial_ids"] == ["t2-s0", "t2-s1", "t2-s2"]   # lowest mean validation loss
    assert answer["chosen"]["seeds"] == [0, 1, 2]
    for c in answer["datasets"].values():
        assert set(c) >= {"baseline_mean", "moe_mean", "delta", "ci_low", "ci_high", "p_raw", "p_adjusted",
                          "effect_size", "queries", "seeds", "seed_ci_low", "seed_ci_high", "delta_per_seed"}
        assert c["ci_low"] <= c["delta"] <= c["ci_high"] and c["p_adjusted"] >= c["p_raw"]
        assert c["seed_ci_low"] <= c["delta"] <= c["seed_ci_high"]


def test_one_seed_has_no_seed_interval():
    (c, *_), = [compare_groups(group_trials(study(seeds=1)), ["a"])]
    assert c.seeds == 1 and c.seed_ci_low != c.seed_ci_low           # NaN
