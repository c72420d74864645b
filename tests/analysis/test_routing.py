"""Routing analysis of a chosen configuration: seed agreement is invariant to how each run numbers its
experts (scikit-learn's adjusted Rand index), expert vs collection is scikit-learn's mutual information,
collapse is counted, and co-routing is averaged over replicates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from sbmoe_ray.analysis.records import group_trials
from sbmoe_ray.analysis.routing import group_routing, routing_lines, routing_metrics, routing_summary

from helpers import record


def _with_routing(rec, assignments: dict[str, list[int]], same: float, chance: float = 0.25, experts: int = 4):
    for t in rec.test:
        t["routing"] = {"num_experts": experts, "pairs": 10, "doc_top1": assignments[t["dataset"]],
                        "query_top1": {}, "same_expert": same, "chance": chance}
    return rec


def _records(assign_per_seed: list[dict[str, list[int]]], same: list[float]):
    scores = {"a": {"q1": 0.5, "q2": 0.4}, "b": {"q1": 0.3, "q2": 0.2}}
    return [_with_routing(record(f"t-s{s}", 4, scores, objective=0.5, seed=s), a, x)
            for s, (a, x) in enumerate(zip(assign_per_seed, same))]


def test_replicates_that_only_renumber_their_experts_agree_fully():
    rng = np.random.default_rng(0)
    first = {"a": rng.integers(0, 4, 60).tolist(), "b": rng.integers(0, 4, 40).tolist()}
    renumber = {d: [(x + 1) % 4 for x in v] for d, v in first.items()}    # same partition, other labels
    other = {d: rng.integers(0, 4, len(v)).tolist() for d, v in first.items()}
    same = group_routing(group_trials(_records([first, renumber], [0.5, 0.7]))[0], ["a", "b"])
    assert same["datasets"]["a"]["seed_ari"] == pytest.approx(1.0)
    assert same["datasets"]["a"]["same_expert"] == pytest.approx(0.6) and same["datasets"]["a"]["lift"] == 2.4
    unrelated = group_routing(group_trials(_records([first, other], [0.5, 0.5]))[0], ["a", "b"])
    assert unrelated["datasets"]["b"]["seed_ari"] == pytest.approx(adjusted_rand_score(first["b"], other["b"]))
    assert abs(unrelated["datasets"]["b"]["seed_ari"]) < 0.2


def test_expert_vs_collection_is_sklearns_mutual_information_and_collapse_is_counted():
    split = {"a": [0, 1] * 30, "b": [2, 3] * 20}                           # each collection has its own experts
    r = group_routing(group_trials(_records([split], [0.5]))[0], ["a", "b"])
    labels = [0] * 60 + [1] * 40
    assert r["nmi"] == pytest.approx(normalized_mutual_info_score(labels, split["a"] + split["b"]))
    assert r["mi_bits"] == pytest.approx(-(0.6 * math.log2(0.6) + 0.4 * math.log2(0.4)))   # = H(collection)
    assert r["unused_experts"] == 0 and r["effective_experts"] == pytest.approx(math.exp(
        -(2 * 0.3 * math.log(0.3) + 2 * 0.2 * math.log(0.2))))
    collapsed = group_routing(group_trials(_records([{"a": [2] * 60, "b": [2] * 40}], [1.0]))[0], ["a", "b"])
    assert collapsed["effective_experts"] == pytest.approx(1.0) and collapsed["unused_experts"] == 3
    assert collapsed["max_share"] == 1.0 and collapsed["nmi"] == pytest.approx(0.0)
    assert math.isnan(collapsed["datasets"]["a"]["seed_ari"])                 # one replicate: no agreement
    both = group_routing(group_trials(_records([{"a": [2] * 60, "b": [2] * 40}] * 2, [1.0, 1.0]))[0], ["a", "b"])
    assert math.isnan(both["datasets"]["a"]["seed_ari"])        # two collapsed replicates agree only trivially
    assert "Collapsed: one expert takes every test document" in routing_lines({"m": both})[0]


def test_the_summary_is_about_the_chosen_configuration_and_reads_as_lines_and_metrics():
    groups = group_trials(_records([{"a": [0, 1] * 5, "b": [1, 0] * 5}] * 3, [0.5, 0.6, 0.7]))
    summary = routing_summary(groups, {"m": groups[0].key}, ["a", "b"])
    assert list(summary) == ["m"] and summary["m"]["replicates"] == 3
    assert "same expert 0.60 vs chance 0.25" in routing_lines(summary)[0]
    metrics = routing_metrics(summary, str)
    assert "Collapsed" not in routing_lines(summary)[0]
    assert metrics["routing.m.a.same_expert"] == pytest.approx(0.6) and "routing.m.nmi" in metrics
    assert routing_summary(groups, {"m": "missing"}, ["a"]) == {}
    assert "no expert assignments" in routing_lines({})[0]
