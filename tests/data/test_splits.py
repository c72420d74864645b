"""A run's training sample: with a fraction below 1 it keeps that share of the training queries with all their
pairs, the same for the same seed (every arm's replicate i) and another for another seed; at 1, every pair."""

from __future__ import annotations

from sbmoe_ray.data.splits import subsample_queries


def test_a_subsample_keeps_a_share_of_the_queries_with_all_their_pairs_drawn_by_the_seed():
    pairs = [(f"q{i}", f"d{i}-{j}") for i in range(100) for j in range(1 + i % 3)]
    kept = subsample_queries(pairs, 0.9, seed=1000)
    queries = {q for q, _ in kept}
    assert len(queries) == 90
    assert kept == [p for p in pairs if p[0] in queries]                  # every pair of a kept query, in order
    assert subsample_queries(pairs, 0.9, seed=1000) == kept               # the same seed: the same sample
    assert {q for q, _ in subsample_queries(pairs, 0.9, seed=1001)} != queries
    assert subsample_queries(pairs, 1.0, seed=1000) == pairs
