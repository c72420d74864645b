"""The primary claim across collections: over one collection it is that collection's combined test; collections
as a random effect widen the interval by what the collections disagree; the seed a training run shares across
collections is counted once; the power plan says what seeds reach the margin and when equivalence cannot."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from sbmoe_ray.analysis.inference import combined
from sbmoe_ray.analysis.power import power_plan
from sbmoe_ray.analysis.primary import adjust_primary, primary_claim


def runs(rng: np.random.Generator, collections: dict[str, float], seeds: int, queries: int = 120,
         seed_sd: float = 0.01, truth: dict[str, np.ndarray] | None = None) -> dict[str, list[dict[str, float]]]:
    """Per collection, ``seeds`` replicates' per-query scores; one seed effect per replicate, shared by every
    collection (the same trained model is tested on all); ``collections``: each one's shift."""
    shared = rng.normal(0, seed_sd, seeds)
    return {name: [{f"q{i}": float(v) for i, v in enumerate(truth[name] + shift + shared[s]
                                                              + rng.normal(0, 0.15, queries))}
                   for s in range(seeds)] for name, shift in collections.items()}


def truths(rng, names, queries=120):
    return {n: rng.random(queries) for n in names}


def test_over_one_collection_the_primary_claim_is_its_combined_test():
    rng = np.random.default_rng(0)
    truth = truths(rng, ["scifact"])
    a, b = runs(rng, {"scifact": 0.02}, 3, truth=truth), runs(rng, {"scifact": 0.0}, 3, truth=truth)
    claim = primary_claim("minilm", "sb-moe vs plain", a, b, "random", 0.01)
    reference = combined(a["scifact"], b["scifact"])
    assert claim.pooling == "fixed" and claim.notes
    assert claim.delta == pytest.approx(reference.delta)
    assert claim.se == pytest.approx(reference.se, rel=1e-9) and claim.df == pytest.approx(reference.df, rel=1e-9)


def test_collections_as_a_random_effect_widen_the_interval_by_their_disagreement():
    rng = np.random.default_rng(1)
    names = {"scifact": 0.06, "nfcorpus": -0.02, "cran": 0.0, "cisi": 0.01, "medline": 0.03}
    truth = truths(rng, names)
    a, b = runs(rng, names, 3, truth=truth), runs(rng, dict.fromkeys(names, 0.0), 3, truth=truth)
    fixed = primary_claim("minilm", "x", a, b, "fixed", 0.01)
    random = primary_claim("minilm", "x", a, b, "random", 0.01)
    assert fixed.delta == pytest.approx(random.delta) == pytest.approx(np.mean(list(random.per_collection.values())))
    assert random.tau2 > 0 and random.se > fixed.se and random.high - random.low > fixed.high - fixed.low
    spread = np.var(list(random.per_collection.values()), ddof=1) / 5
    assert random.variance["spread"] == pytest.approx(spread) and random.df == 4


def test_collections_random_with_one_run_an_arm_is_the_t_test_over_the_collections_deltas():
    rng = np.random.default_rng(4)
    names = {f"c{i}": shift for i, shift in enumerate([0.03, -0.01, 0.0, 0.02, 0.05, 0.01])}
    truth = truths(rng, names)
    a, b = runs(rng, names, 1, truth=truth), runs(rng, dict.fromkeys(names, 0.0), 1, truth=truth)
    claim = primary_claim("minilm", "x", a, b, "random", 0.01)
    reference = stats.ttest_1samp(list(claim.per_collection.values()), 0.0)
    assert claim.p == pytest.approx(reference.pvalue, rel=1e-9) and claim.df == reference.df == 5
    low, high = reference.confidence_interval(0.95)
    assert (claim.low, claim.high) == (pytest.approx(low), pytest.approx(high))


def test_a_seed_shared_by_every_collection_is_counted_once_in_the_mean():
    rng = np.random.default_rng(2)
    names = [f"c{i}" for i in range(6)]
    truth = truths(rng, names, 400)
    seed_var = []
    for _ in range(60):
        a = runs(rng, dict.fromkeys(names, 0.0), 3, 400, 0.02, truth)
        b = runs(rng, dict.fromkeys(names, 0.0), 3, 400, 0.02, truth)
        seed_var.append(primary_claim("m", "x", a, b, "fixed", 0.01).variance["seeds"])
    # the shared seed sd 0.02 moves the collection mean by 0.02 whatever the collections: σ²_z (2/3) = 2.7e-4
    assert np.mean(seed_var) == pytest.approx(0.02 ** 2 * 2 / 3, rel=0.35)


def test_the_family_adjusts_p_and_states_the_mde_at_the_first_holm_step():
    rng = np.random.default_rng(3)
    names = {"scifact": 0.0, "nfcorpus": 0.0}
    truth = truths(rng, names)
    claims = [primary_claim(m, "x", runs(rng, names, 3, truth=truth), runs(rng, names, 3, truth=truth), "fixed", 0.01)
              for m in ("minilm", "e5")]
    adjust_primary(claims, 0.05, 0.8)
    assert all(c.alpha_adjusted == 0.025 and c.p_adjusted >= c.p and c.mde > 0 and c.verdict for c in claims)


def test_the_power_plan_finds_the_seeds_for_the_margin_and_says_when_equivalence_is_out_of_reach():
    pilot = {"scifact": {"queries": 300, "interaction": 0.01, "query_diff": 0.01},
             "nfcorpus": {"queries": 323, "interaction": 0.01, "query_diff": 0.01}}
    plan = power_plan(pilot, 2e-4, 3, "fixed", 0.0, 0.05, 1, 0.8, 0.02, "stage 1")
    more = power_plan(pilot, 2e-4, 10, "fixed", 0.0, 0.05, 1, 0.8, 0.02, "stage 1")
    assert more.mde < plan.mde and plan.seeds_for_margin is not None and plan.seeds_for_margin > 3
    assert power_plan(pilot, 2e-4, plan.seeds_for_margin, "fixed", 0.0, 0.05, 1, 0.8, 0.02, "s").mde <= 0.02
    tight = power_plan(pilot, 2e-4, 3, "fixed", 0.0, 0.05, 1, 0.8, 0.001, "stage 1")
    assert tight.seeds_for_margin is None and any("out of reach" in line for line in tight.lines())
    assert any("unreachable" in line for line in tight.lines())
