"""Retrieval metrics with pytrec_eval, defined exactly as BEIR's ``EvaluateRetrieval``, and paired t-tests.

Means are over the queries that have both judgements and a ranking (as BEIR); documents whose id equals
the query id are dropped from the ranking first, for every query (BEIR's ``ignore_identical_ids=True``) or
for the queries a per-dataset rule names (:func:`sbmoe_ray.data.beir.identical_id_queries`). MRR@10 is
pytrec_eval's ``recip_rank`` on the top 10 (BEIR's custom MRR gives the same value). Values are not
rounded (BEIR rounds to 5 decimals).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytrec_eval

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]

# Our metric name -> pytrec_eval measure on the full ranking, or on the top-10 for MRR@10.
METRICS: dict[str, str] = {
    "ndcg@10": "ndcg_cut_10",
    "recall@100": "recall_100",
    "mrr@10": "recip_rank",
    "map@100": "map_cut_100",
    "p@1": "P_1",
}


ZERO_SHOT_METRIC = "zs_val_ndcg@10"     # best checkpoint's nDCG@10 on data.zero_shot_validation (if set)


def mlflow_name(key: str) -> str:
    """MLflow-friendly metric names (no ``@``): ``ndcg@10`` -> ``ndcg_at_10``."""
    return key.replace("@", "_at_")


def metric_key(dataset: str, metric: str) -> str:
    """Per-dataset metric names: ``scifact.ndcg_at_10``."""
    return f"{dataset}.{mlflow_name(metric)}"


def final_metrics(test: list[dict[str, Any]]) -> dict[str, float]:
    """Every test metric of a trial by its per-dataset name, and an approximate index's recall@100 against
    exact search where one answered (``<dataset>.search_recall@100``), and for a model with experts how often a
    query and its relevant document share the top-1 expert, against chance (``<dataset>.routing_same_expert``)."""
    metrics = {metric_key(r["dataset"], m): v for r in test for m, v in r["metrics"].items()}
    metrics.update({metric_key(r["dataset"], f"routing_{k}"): r["routing"][k] for r in test
                    for k in ("same_expert", "chance") if k in r.get("routing", {})})
    return {**metrics, **{metric_key(r["dataset"], "search_recall@100"): r["search"]["recall@100"]
                          for r in test if "recall@100" in r.get("search", {})}}


@dataclass
class RetrievalMetrics:
    means: dict[str, float]                    # metric -> mean over queries
    per_query: dict[str, dict[str, float]]     # metric -> {query id: value}

    @property
    def num_queries(self) -> int:
        return len(next(iter(self.per_query.values()), {}))


def ranked(run: Run, k: int) -> Run:
    """Each query's top ``k`` in trec_eval's order: score descending, ties by document id descending."""
    return {qid: dict(sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)[:k])
            for qid, docs in run.items()}


def drop_identical(run: Run, ignore_identical_ids: bool | set[str] = True) -> Run:
    """``run`` without a document whose id is the query's, for every query (True, BEIR's default), none
    (False), or the queries in a set (a per-dataset rule)."""
    if ignore_identical_ids is False:
        return run
    drop = set(run) if ignore_identical_ids is True else ignore_identical_ids
    return {qid: {did: s for did, s in docs.items() if did != qid} if qid in drop else docs
            for qid, docs in run.items()}


def evaluate_run(qrels: Qrels, run: Run, ignore_identical_ids: bool | set[str] = True) -> RetrievalMetrics:
    """Metrics of ``run`` after the identical-id rule (:func:`drop_identical`)."""
    run = drop_identical(run, ignore_identical_ids)
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "map_cut.100", "P.1"}).evaluate(run)
    top10 = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(ranked(run, 10))
    per_query: dict[str, dict[str, float]] = {}
    for name, measure in METRICS.items():
        source = top10 if measure == "recip_rank" else full
        per_query[name] = {qid: source.get(qid, {}).get(measure, 0.0) for qid in full}
    means = {name: (sum(v.values()) / len(v) if v else float("nan")) for name, v in per_query.items()}
    return RetrievalMetrics(means, per_query)


@dataclass
class PairedTest:
    mean_a: float
    mean_b: float
    delta: float          # mean_b - mean_a
    statistic: float
    p_value: float
    num_queries: int


def paired_t_test(a: dict[str, float], b: dict[str, float]) -> PairedTest:
    """Two-sided paired t-test of per-query scores of run ``b`` against run ``a`` on their common queries."""
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        raise ValueError(f"a paired t-test needs >= 2 common queries, got {len(common)}")
    xs, ys = [a[q] for q in common], [b[q] for q in common]
    mean_a, mean_b = sum(xs) / len(xs), sum(ys) / len(ys)
    if all(x == y for x, y in zip(xs, ys)):
        return PairedTest(mean_a, mean_b, 0.0, 0.0, 1.0, len(common))
    from scipy import stats  # here, not at import: scipy.stats costs every trial process ~1 s of CPU

    result = stats.ttest_rel(ys, xs)
    p_value = float(result.pvalue) if not math.isnan(result.pvalue) else 1.0
    return PairedTest(mean_a, mean_b, mean_b - mean_a, float(result.statistic), p_value, len(common))
