"""Inference over queries and seeds: without a seed variance it is scipy's paired t-test and statsmodels'
paired TOST; an arm whose replicates agree still gets the other arm's seed component; an A/A check on
simulated replicates with a real seed effect rejects at about α where the query-only test rejects most pairs;
the minimum detectable effect matches statsmodels' power solver. (The components themselves against
statsmodels' MixedLM: test_components.py; the test's size by simulation: test_simulation.py.)"""

from __future__ import annotations

import random

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import ttost_paired

from sbmoe_ray.analysis.inference import aa_check, combined


def scores(rng: random.Random, n: int = 60, shift: float = 0.0) -> dict[str, float]:
    return {f"q{i}": rng.random() + shift for i in range(n)}


def test_without_a_seed_variance_it_is_scipys_paired_t_test_and_statsmodels_tost():
    rng = random.Random(0)
    a = scores(rng)
    b = {q: v + rng.gauss(0.004, 0.05) for q, v in a.items()}
    estimate = combined([b], [a])
    reference = stats.ttest_rel(list(b.values()), list(a.values()))
    assert estimate.p == pytest.approx(reference.pvalue)
    assert (estimate.low, estimate.high) == pytest.approx(tuple(reference.confidence_interval()))
    for margin in (0.005, 0.01, 0.03):
        expected = ttost_paired(np.array(list(b.values())), np.array(list(a.values())), -margin, margin)[0]
        assert estimate.tost(margin) == pytest.approx(expected, rel=1e-9)


def test_identical_replicates_of_one_arm_still_get_the_other_arms_seed_variance():
    rng = random.Random(2)
    base = [scores(rng, shift=s) for s in (0.0, 0.03, -0.02)]               # baseline seeds differ
    moe = [dict(base[0])] * 3                                               # SB-MoE seeds identical
    estimate = combined(moe, base)
    assert estimate.high - estimate.low > 0 and estimate.se > estimate.query_se > 0 and estimate.seeds_estimated
    assert not combined(moe[:2], base).seeds_estimated                # 2 seeds: not estimated


def test_an_aa_check_with_a_real_seed_effect_rejects_near_alpha_where_the_query_only_test_rejects_most():
    rng = np.random.default_rng(3)
    replicates = {}
    truth = rng.random(100)
    for config in range(40):
        runs = [truth + rng.normal(0, 0.03) + rng.normal(0, 0.05, 100) for _ in range(3)]
        replicates[config] = [{f"q{i}": float(v) for i, v in enumerate(run)} for run in runs]
    aa = aa_check(replicates, alpha=0.05)
    assert aa["pairs"] == 120
    assert aa["combined_rate"] <= 0.075 and aa["query_only_rate"] >= 0.5


def test_the_minimum_detectable_effect_matches_statsmodels_power_solver():
    rng = random.Random(4)
    a = scores(rng, n=300)
    b = {q: v + rng.gauss(0.0, 0.1) for q, v in a.items()}
    estimate = combined([b], [a])
    sd = float(np.std([b[q] - a[q] for q in a], ddof=1))
    reference = TTestPower().solve_power(nobs=300, alpha=0.05, power=0.8) * sd
    assert estimate.mde() == pytest.approx(reference, rel=0.01)


def test_a_baseline_whose_replicates_are_one_run_is_not_pooled_into_the_seed_component():
    from sbmoe_ray.analysis.components import estimate
    from sbmoe_ray.analysis.inference import matrix

    rng = np.random.default_rng(5)
    truth = rng.random(80)
    moe = [{f"q{i}": float(v) for i, v in enumerate(truth + rng.normal(0, 0.03) + rng.normal(0, 0.05, 80))}
           for _ in range(3)]
    zero_shot = [{f"q{i}": float(v) for i, v in enumerate(truth)}] * 3        # the same encoder, three "seeds"
    estimate_ = combined(moe, zero_shot)
    alone = estimate([matrix(moe, [f"q{i}" for i in range(80)])])
    diff = np.array([[r[f"q{i}"] for i in range(80)] for r in moe]).mean(0) - truth
    assert estimate_.se ** 2 == pytest.approx(float(alone.seed) / 3 + diff.var(ddof=1) / 80)
    assert estimate_.seed_df == pytest.approx(float(alone.seed_df))
