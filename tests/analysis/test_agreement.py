"""The proxy check: Kendall's τ and Spearman's ρ equal scipy's, with a bootstrap interval; the verdict trusts
the proxy only on a significant positive τ."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from sbmoe_ray.analysis.agreement import rank_agreement, verdict


def test_the_rank_check_is_scipys_kendall_and_spearman_with_a_bootstrap_interval():
    x, y = [0.1, 0.4, 0.2, 0.9, 0.5], [1.0, 1.3, 1.4, 2.0, 1.2]
    agreement = rank_agreement(x, y)
    assert agreement["kendall_tau"] == pytest.approx(stats.kendalltau(x, y).statistic)
    assert agreement["kendall_tau_p"] == pytest.approx(stats.kendalltau(x, y).pvalue)
    assert agreement["spearman_rho"] == pytest.approx(stats.spearmanr(x, y).statistic)
    low, high = agreement["kendall_tau_ci"]
    assert -1 <= low <= agreement["kendall_tau"] <= high <= 1
    assert all(math.isnan(v) for v in rank_agreement(x[:3], y[:3])["kendall_tau_ci"])   # too few for an interval


def test_the_verdict_trusts_the_proxy_only_on_a_significant_positive_tau():
    assert "too few configurations (2)" in verdict(rank_agreement([1, 2], [1, 2]), "m")   # tau = 1, p = 1
    four = rank_agreement([1, 2, 3, 4], [1, 2, 3, 4])                       # tau = 1, exact p = 0.083
    assert "not conclusive" in verdict(four, "m")
    eight = rank_agreement(list(range(8)), list(range(8)))
    assert "can be trusted" in verdict(eight, "m")
    assert "do not trust" in verdict(rank_agreement([1, 2, 3, 4], [2, 1, 4, 3][::-1]), "m")
