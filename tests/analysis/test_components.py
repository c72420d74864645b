"""The seed variance component without the seed x query interaction: equal to statsmodels' MixedLM (REML) on
simulated balanced data and on arms with unequal seed counts, and near the truth where the replicate means'
own variance is not."""

from __future__ import annotations

import numpy as np
import pytest

from sbmoe_ray.analysis.components import estimate, mixedlm


def arms(rng: np.random.Generator, seeds: tuple[int, ...], queries: int, seed_var: float, interaction: float):
    truth = rng.random(queries)
    return [truth + a * 0.05 + rng.normal(0, np.sqrt(seed_var), (k, 1)) + rng.normal(0, np.sqrt(interaction), (k, queries))
            for a, k in enumerate(seeds)]


@pytest.mark.parametrize("seeds", [(3, 3), (4, 4), (3, 5), (2, 6)])
def test_the_closed_form_components_equal_statsmodels_mixedlm_reml(seeds):
    data = arms(np.random.default_rng(sum(seeds)), seeds, 25, 4e-3, 1e-2)
    mine = estimate(data)
    seed, interaction = mixedlm(data)
    assert mine.seed > 0
    assert float(mine.seed) == pytest.approx(seed, rel=1e-3)
    assert float(mine.interaction) == pytest.approx(interaction, rel=1e-3)


def test_the_seed_component_drops_the_interaction_the_replicate_means_carry():
    rng = np.random.default_rng(7)
    q, seed_var, interaction = 300, 1e-4, 0.04           # interaction / Q = 1.3e-4: more than the seed's
    draws = [estimate(arms(rng, (8, 8), q, seed_var, interaction)) for _ in range(1000)]
    assert np.mean([float(c.seed) for c in draws]) == pytest.approx(seed_var, rel=0.1)
    assert np.mean([float(c.replicate_mean_variance()) for c in draws]) == pytest.approx(
        seed_var + interaction / q, rel=0.15)


def test_one_replicate_an_arm_estimates_no_seed_component():
    comps = estimate([np.ones((1, 10)), np.zeros((1, 10))])
    assert not comps.estimated and comps.seed == 0
