"""Comparisons with the baseline: the query-only interval equals scipy's paired t-test on the seed-averaged
queries and the combined one is wider; adjusted p-values are statsmodels' over the confirmatory family,
apart from the exploratory rest; one seed per arm claims nothing; the answer can be "the baseline" when
validation prefers it; the summary has its schema and its A/A check."""

from __future__ import annotations

import random

import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from sbmoe_ray.analysis.answer import claimed_keys, study_summary
from sbmoe_ray.analysis.comparisons import CONFIRMATORY, EXPLORATORY, adjust, compare_groups, paired
from sbmoe_ray.analysis.records import group_trials
from sbmoe_ray.study.claims import ClaimsConfig

from helpers import record, study

BUDGET = {"configurations_planned": 4, "seeds": 3, "epochs": 2}
CLAIMS = ClaimsConfig()


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
    assert g.per_query("a")["q7"] == pytest.approx(sum(r.per_query("a")["q7"] for r in g.records) / 3)


def test_the_query_only_interval_is_scipys_and_the_combined_one_counts_the_seeds_too():
    groups = group_trials(study())
    comparison = compare_groups(groups, ["a"], set(), CLAIMS)[1]               # shift 0.05 vs the baseline
    base, moe = groups[0].per_query("a"), groups[2].per_query("a")
    reference = stats.ttest_rel([moe[q] for q in base], [base[q] for q in base])
    assert comparison.query_p == pytest.approx(reference.pvalue) and comparison.seeds == 3
    assert (comparison.query_ci_low, comparison.query_ci_high) == pytest.approx(tuple(reference.confidence_interval()))
    assert comparison.delta == pytest.approx(sum(moe[q] - base[q] for q in base) / len(base))
    assert comparison.ci_high - comparison.ci_low > comparison.query_ci_high - comparison.query_ci_low
    assert comparison.seed_df > 0 and comparison.seeds_estimated      # the two arms' seed component
    per_seed = [sum(r.per_query("a")[q] - base[q] for q in base) / len(base) for r in groups[2].records]
    assert comparison.delta_per_seed == pytest.approx(per_seed)
    assert comparison.trial_ids == ["t1-s0", "t1-s1", "t1-s2"]


@pytest.mark.parametrize("correction", ["holm", "fdr_bh"])
def test_p_values_are_adjusted_over_the_confirmatory_family_apart_from_the_exploratory_rest(correction):
    groups = group_trials(study())
    claimed = claimed_keys(groups, "min")
    comparisons = compare_groups(groups, ["a", "b"], claimed, ClaimsConfig(correction=correction))
    assert len(comparisons) == 6                                     # 3 configurations x 2 datasets
    for family, size in ((CONFIRMATORY, 2), (EXPLORATORY, 4)):
        members = [c for c in comparisons if c.family == family]
        assert len(members) == size
        raw = [c.p_raw for c in members]
        assert [c.p_adjusted for c in members] == pytest.approx(list(multipletests(raw, method=correction)[1]))
    assert all(c.p_adjusted >= c.p_raw and c.tost_p_adjusted >= c.tost_p for c in comparisons)


def test_the_summary_names_the_configuration_chosen_by_mean_validation_and_its_confirmatory_comparison():
    groups = group_trials(study())
    comparisons = compare_groups(groups, ["a", "b"], claimed_keys(groups, "min"), CLAIMS)
    summary = study_summary(groups, comparisons, ["a", "b"], "min", "val_loss", BUDGET, CLAIMS)
    assert summary.comparisons == 6 and summary.confirmatory == 2 and summary.correction == "holm"
    assert summary.budget == {**BUDGET, "configurations": 4, "trials": 12}
    (answer,) = summary.per_base_model
    assert answer.chosen.trial_ids == ["t2-s0", "t2-s1", "t2-s2"]   # lowest mean validation loss
    assert answer.preferred == "sb-moe" and answer.chosen.seeds == [0, 1, 2]
    for c in answer.datasets.values():
        assert c.family == CONFIRMATORY and c.verdict == "better"   # shift 0.2 on 40 queries, 3 seeds
        assert c.ci_low <= c.delta <= c.ci_high and c.mde > 0
    assert summary.aa_check["pairs"] == 4 * 2 * 3                       # 4 configurations, 2 sets, 3 pairs


def test_one_seed_per_arm_claims_nothing_on_query_evidence_alone():
    groups = group_trials(study(seeds=1))
    comparisons = compare_groups(groups, ["a"], claimed_keys(groups, "min"), CLAIMS)
    chosen = next(c for c in comparisons if c.family == CONFIRMATORY)
    assert chosen.query_p < 1e-6 and chosen.seed_df == 0                  # a large shift, one seed
    assert chosen.verdict.startswith("seed variance not estimated")


def test_a_study_whose_baseline_validates_best_answers_baseline():
    queries = {d: {f"q{i}": random.Random(i).random() for i in range(20)} for d in ("a",)}
    records = [record(f"b{s}", 0, queries, objective=0.5, seed=s) for s in range(3)]
    records += [record(f"t-s{s}", 3, queries, objective=0.9, seed=s) for s in range(3)]
    groups = group_trials(records)
    comparisons = compare_groups(groups, ["a"], claimed_keys(groups, "min"), CLAIMS)
    (answer,) = study_summary(groups, comparisons, ["a"], "min", "val_loss", BUDGET, CLAIMS).per_base_model
    assert answer.preferred == "baseline" and answer.baseline_objective == 0.5


def test_a_lead_within_the_validation_noise_goes_to_the_simpler_arm():
    from sbmoe_ray.analysis.records import preferred_group, validation_noise

    from helpers import record

    scores = {"a": {"q0": 0.5, "q1": 0.6}}
    base = [record(f"b{s}", 0, scores, objective=v, seed=s) for s, v in enumerate((0.700, 0.710, 0.690))]
    close = [record(f"c{s}", 3, scores, objective=v, seed=s) for s, v in enumerate((0.695, 0.705, 0.690))]
    far = [record(f"f{s}", 3, scores, objective=v, seed=s, lr=1e-2) for s, v in enumerate((0.600, 0.610, 0.590))]
    pooled = (sum((v - 0.7) ** 2 for v in (0.700, 0.710, 0.690)) + sum((v - 2.09 / 3) ** 2 for v in (0.695, 0.705, 0.690))) / 4
    assert validation_noise(group_trials(base + close)) == pytest.approx(pooled ** 0.5)
    assert preferred_group(group_trials(base + close), "min").is_baseline                  # 0.003 ahead: noise
    assert not preferred_group(group_trials(base + close + far), "min").is_baseline        # 0.1 ahead


def test_holm_adjustment_leaves_the_garbage_collector_as_it_found_it():
    """``adjust`` keeps the objects alive out of statsmodels' ``gc.collect()`` for the call only: nothing stays
    frozen, and garbage made of objects that were alive during the call is collected afterwards."""
    import gc
    import weakref

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a                        # a cycle: only the collector frees it
    alive = weakref.ref(a)
    assert adjust([0.01, 0.2, 0.03]) == pytest.approx([0.03, 0.2, 0.06])
    assert gc.get_freeze_count() == 0
    del a, b
    gc.collect()
    assert alive() is None
