"""Metrics: hand-computed values, equality with BEIR's EvaluateRetrieval, paired t-test."""

from __future__ import annotations

import math
import random

import pytest
from beir.retrieval.custom_metrics import mrr as beir_mrr
from beir.retrieval.evaluation import EvaluateRetrieval
from scipy import stats

from sbmoe_ray.evaluation.metrics import evaluate_run, paired_t_test

QRELS = {"q1": {"a": 1, "c": 2, "z": 0}, "q2": {"b": 1}}
RUN = {"q1": {"a": 0.9, "b": 0.8, "c": 0.7, "z": 0.95}, "q2": {"a": 0.5, "c": 0.4, "b": 0.3}}


def test_hand_computed_values():
    m = evaluate_run(QRELS, RUN)
    # trec_eval's nDCG uses linear gain (the grade itself), as BEIR reports it.
    # q1 ranking: z(0) a(1) b(-) c(2): DCG = 1/log2(3) + 2/log2(5); ideal c(2) a(1): 2 + 1/log2(3)
    dcg = 1 / math.log2(3) + 2 / math.log2(5)
    ndcg_q1 = dcg / (2 + 1 / math.log2(3))
    ndcg_q2 = (1 / math.log2(4)) / 1.0                 # b at rank 3
    assert m.per_query["ndcg@10"]["q1"] == pytest.approx(ndcg_q1)
    assert m.means["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2)
    assert m.per_query["mrr@10"] == pytest.approx({"q1": 1 / 2, "q2": 1 / 3})
    assert m.per_query["p@1"] == {"q1": 0.0, "q2": 0.0}
    assert m.per_query["recall@100"] == {"q1": 1.0, "q2": 1.0}
    assert m.per_query["map@100"]["q1"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert m.num_queries == 2


def test_identical_query_and_document_ids_are_ignored():
    m = evaluate_run({"q1": {"d": 1}}, {"q1": {"q1": 2.0, "d": 1.0}})
    assert m.per_query["p@1"]["q1"] == 1.0
    kept = evaluate_run({"q1": {"d": 1}}, {"q1": {"q1": 2.0, "d": 1.0}}, ignore_identical_ids=False)
    assert kept.per_query["p@1"]["q1"] == 0.0


def test_equal_to_beir_evaluate_retrieval_on_a_random_run():
    rng = random.Random(0)
    docs = [f"d{i}" for i in range(300)]
    qrels = {f"q{i}": {d: rng.choice([0, 1, 1, 2]) for d in rng.sample(docs, rng.randint(1, 8))} for i in range(40)}
    run = {q: {d: rng.random() for d in docs} for q in qrels}
    ours = evaluate_run(qrels, run).means
    ndcg, _map, recall, precision = EvaluateRetrieval.evaluate(qrels, {q: dict(r) for q, r in run.items()}, [1, 10, 100])
    mrr = beir_mrr(qrels, run, [10])
    assert ours["ndcg@10"] == pytest.approx(ndcg["NDCG@10"], abs=1e-5)
    assert ours["map@100"] == pytest.approx(_map["MAP@100"], abs=1e-5)
    assert ours["recall@100"] == pytest.approx(recall["Recall@100"], abs=1e-5)
    assert ours["p@1"] == pytest.approx(precision["P@1"], abs=1e-5)
    assert ours["mrr@10"] == pytest.approx(mrr["MRR@10"], abs=1e-5)


def test_paired_t_test_matches_scipy_on_common_queries():
    a = {"q1": 0.1, "q2": 0.5, "q3": 0.3, "q4": 0.9, "only_a": 1.0}
    b = {"q1": 0.2, "q2": 0.7, "q3": 0.3, "q4": 1.0}
    result = paired_t_test(a, b)
    expected = stats.ttest_rel([0.2, 0.7, 0.3, 1.0], [0.1, 0.5, 0.3, 0.9])
    assert result.num_queries == 4 and result.delta == pytest.approx(0.1)
    assert result.p_value == pytest.approx(expected.pvalue) and result.statistic == pytest.approx(expected.statistic)
    assert paired_t_test(b, b).p_value == 1.0
