"""The combined test holds its level at the components this study measured (σ²_e / Q at least half of the
replicate means' variance), and finds a true effect of its own minimum detectable size at its stated power."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from sbmoe_ray.analysis.components import estimate
from sbmoe_ray.analysis.simulation import draw_arms, query_difference_variance, rejection_rate, size_at

Q, INTERACTION, QUERY_DIFF = 300, 0.04, 0.02


@pytest.mark.parametrize("share", [0.5, 0.65])
def test_the_size_at_the_studys_regime_is_near_alpha(share):
    seed = INTERACTION / Q * (1 - share) / share         # σ²_e / Q is `share` of σ²_b + σ²_e / Q
    size = rejection_rate(seed, INTERACTION, QUERY_DIFF, 3, 3, Q, alpha=0.05, draws=2000, rng_seed=11)
    assert 0.035 <= size.rate <= 0.065, size.text()
    assert size.low < size.rate < size.high


def test_a_true_effect_of_the_mde_is_found_at_the_stated_power():
    m = n = 3
    seed = INTERACTION / Q
    variance = seed * (2 / m) + (QUERY_DIFF + INTERACTION * 2 / m) / Q
    df = 2 * (m - 1)                                      # the seed part's df bounds the Satterthwaite df below
    mde = (stats.t.ppf(0.975, df) + stats.t.ppf(0.8, df)) * math.sqrt(variance)
    power = rejection_rate(seed, INTERACTION, QUERY_DIFF, m, n, Q, effect=mde, draws=2000, rng_seed=12)
    assert 0.75 <= power.rate <= 0.97, power.text()


def test_the_size_check_reads_a_comparisons_own_components():
    rng = np.random.default_rng(13)
    a, b = draw_arms(rng, 1, 3, 3, Q, 1e-4, INTERACTION, QUERY_DIFF)
    comps = estimate([a[0], b[0]])
    s2_d = float((a[0].mean(0) - b[0].mean(0)).var(ddof=1))
    assert query_difference_variance(s2_d, float(comps.interaction), 3, 3) == pytest.approx(QUERY_DIFF, rel=0.35)
    size = size_at(comps, s2_d, 3, 3, draws=500)
    assert size.draws == 500 and size.seeds == (3, 3) and size.queries == Q and 0 <= size.rate <= 0.2


def test_a_size_whose_interval_excludes_alpha_is_named_conservative_or_anti_conservative():
    from sbmoe_ray.analysis.simulation import RejectionRate

    def size(rate, low, high):
        return RejectionRate(rate, low, high, 2000, 0.05, 0.0, (3, 3), 799)

    assert size(0.0705, 0.060, 0.083).calibration == "anti-conservative"
    assert size(0.025, 0.019, 0.033).calibration == "conservative"
    assert size(0.049, 0.040, 0.059).calibration == ""
    assert size(0.0705, 0.060, 0.083).text().endswith(": anti-conservative")
    power = RejectionRate(0.8, 0.78, 0.82, 2000, 0.05, 0.01, (3, 3), 799)
    assert power.calibration == "" and "power at" in power.text()


# six collections of this project's default test sets: queries, σ²_e, σ²_d of the order stage 2 measures
COLLECTIONS = {"nfcorpus": (323, 0.0015, 0.0008), "cran": (225, 0.0011, 0.0017), "cisi": (76, 0.0007, 0.0019),
               "med": (30, 0.0013, 0.0015), "cacm": (52, 0.0027, 0.0024), "vaswani": (93, 0.0014, 0.0009)}


@pytest.mark.parametrize(("seed_component", "tau2", "fixed_baseline"), [
    (0.0, 0.0, False),          # the boundary: no shared seed, collections agree (where truncation was conservative)
    (5e-6, 1e-4, False),        # a shared seed and disagreeing collections
    (0.0, 1e-4, True),          # stage 1: a deterministic baseline, disagreeing collections (PM + Satterthwaite: 7 %)
])
def test_the_primary_claims_size_is_near_alpha_at_and_away_from_the_boundary(seed_component, tau2, fixed_baseline):
    from dataclasses import replace

    from sbmoe_ray.analysis.primary import claim_of
    from sbmoe_ray.analysis.simulation import primary_size

    rng = np.random.default_rng(21)
    arrays = {name: tuple(x[0] for x in draw_arms(rng, 1, 3, 3, q, 0.0, e, d)) for name, (q, e, d) in COLLECTIONS.items()}
    claim = replace(claim_of("m", "x", arrays, "random", 0.01), seed_component=seed_component, tau2=tau2,
                    fixed_baseline=fixed_baseline,
                    components={n: {"queries": q, "interaction": e, "query_diff": d}
                                for n, (q, e, d) in COLLECTIONS.items()})
    size = primary_size(claim, 0.05, draws=2000, rng_seed=22)
    assert 0.035 <= size.rate <= 0.065, size.text()
