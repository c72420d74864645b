"""The proxy check: Kendall's τ with scipy's exact p and Spearman's ρ; intervals only where a bootstrap means
something; "underpowered" where no ordering can reach p < 0.05; top-k recall and regret of the promotion."""

from __future__ import annotations

import itertools
import math

import pytest
from scipy import stats

from sbmoe_ray.analysis.agreement import (
    BOOTSTRAP_FROM,
    ProxyCheck,
    decision_quality,
    rank_agreement,
    smallest_p,
    verdict,
)
from sbmoe_ray.analysis.summary import ConfigurationRow


def test_the_rank_check_is_scipys_exact_kendall_and_spearman():
    x, y = [0.1, 0.4, 0.2, 0.9, 0.5, 0.3], [1.0, 1.3, 1.4, 2.0, 1.2, 0.9]
    agreement = rank_agreement(x, y)
    exact = stats.kendalltau(x, y, method="exact")
    assert agreement["kendall_tau"] == pytest.approx(exact.statistic)
    assert agreement["kendall_tau_p"] == pytest.approx(exact.pvalue)
    assert agreement["spearman_rho"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert all(math.isnan(v) for v in agreement["kendall_tau_ci"])             # 6 < BOOTSTRAP_FROM: no interval


def test_a_bootstrap_interval_only_from_enough_configurations():
    x = list(range(BOOTSTRAP_FROM))
    y = [v + (1.5 if v % 3 == 0 else 0) for v in x]
    low, high = rank_agreement(x, y)["kendall_tau_ci"]
    assert -1 <= low <= rank_agreement(x, y)["kendall_tau"] <= high <= 1


def test_no_ordering_of_four_prints_a_degenerate_interval_and_every_one_is_underpowered():
    for order in itertools.permutations(range(4)):
        agreement = rank_agreement([0.1, 0.2, 0.3, 0.4], [float(v) for v in order])
        line = ProxyCheck(**agreement, verdict=verdict(agreement, "m")).line()
        assert agreement["kendall_tau_p"] > 0.05 and "[" not in line
        assert "underpowered" in line and "n = 4" in line
    assert smallest_p(4) == pytest.approx(1 / 12) and smallest_p(5) < 0.05


def test_the_verdict_trusts_the_proxy_only_on_a_significant_positive_tau():
    assert "too few configurations (2)" in verdict(rank_agreement([1, 2], [1, 2]), "m")
    six = rank_agreement(list(range(6)), [1, 0, 3, 2, 4, 5])                   # tau = 0.73, exact p = 0.056
    assert "not significant" in verdict(six, "m")
    eight = rank_agreement(list(range(8)), list(range(8)))
    assert "can be trusted" in verdict(eight, "m")
    assert "do not trust" in verdict(rank_agreement(list(range(6)), list(range(6))[::-1]), "m")


def test_top_k_recall_and_regret_judge_the_promotion_as_a_decision():
    rows = [ConfigurationRow("m", "promoted", c, c, s1, s2, math.nan, 1)
            for c, s1, s2 in (("a", 0.1, 0.50), ("b", 0.2, 0.40), ("c", 0.3, 0.45), ("d", 0.4, 0.60))]
    quality = decision_quality(rows, promoted=2, mode="min")                  # promoted a, b; stage 2 best b, c
    assert quality["top_k_recall"] == 0.5 and quality["regret"] == pytest.approx(0.10)
    maximise = decision_quality(rows, promoted=2, mode="max")                 # promoted d, c; stage 2 best d, a
    assert maximise["top_k_recall"] == 0.5 and maximise["regret"] == 0.0
