"""Where the gate sends a test collection: each document's and query's top-1 expert, and how often a query
and its relevant documents go to the same expert.

SB-MoE (Sokli et al. 2025, arXiv 2510.15683) routes queries and documents through one shared gate, so
"specialised experts" has a testable meaning: a query should meet its relevant documents in the same
expert more often than two items drawn from the same expert shares would by chance. The authors show t-SNE
plots of expert assignments; these numbers are the measurable version, recorded once per test
evaluation (dense path only; the sharded path for large collections records expert load, not routing).

``same_expert``: over every judged (query, document) pair with relevance > 0 whose both sides were
encoded, the share with the same top-1 expert. ``chance``: the same share if queries and documents kept
their expert marginals over those pairs but were paired independently, Σ_e p_query(e) · p_doc(e).
``doc_top1`` (corpus order) lets the analysis compare replicates (agreement across seeds) and collections
(mutual information between expert and collection): :mod:`sbmoe_ray.analysis.routing`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def empty_assignments(model, size: int) -> np.ndarray | None:
    """An array for the top-1 expert of ``size`` items (-1: not routed), or None for a model without a head."""
    return np.full(size, -1, dtype=np.int16) if getattr(model, "head", None) is not None else None


def record_top1(assignments: np.ndarray | None, index, routing) -> None:
    """Write the batch's top-1 experts (``routing.topk[:, 0]``, the most probable) at ``index``."""
    if assignments is not None and routing is not None:
        assignments[index] = routing.topk[:, 0].cpu().numpy()


def routing_summary(qrels: dict[str, dict[str, int]], doc_ids: Sequence[str], doc_top1: np.ndarray,
                    query_ids: Sequence[str], query_top1: np.ndarray, num_experts: int) -> dict:
    """Query-document co-routing over the relevant pairs, its chance level, and each item's top-1 expert."""
    doc_at = {d: i for i, d in enumerate(doc_ids)}
    query_at = {q: i for i, q in enumerate(query_ids)}
    pairs = [(query_top1[query_at[q]], doc_top1[doc_at[d]]) for q, judged in qrels.items() if q in query_at
             for d, rel in judged.items() if rel > 0 and d in doc_at]
    pairs = [(q, d) for q, d in pairs if q >= 0 and d >= 0]
    out = {"num_experts": int(num_experts), "pairs": len(pairs), "doc_top1": doc_top1.astype(int).tolist(),
           "query_top1": dict(zip(query_ids, query_top1.astype(int).tolist()))}
    if not pairs:
        return {**out, "same_expert": float("nan"), "chance": float("nan")}
    q, d = np.array(pairs).T
    p_query = np.bincount(q, minlength=num_experts) / len(q)
    p_doc = np.bincount(d, minlength=num_experts) / len(d)
    return {**out, "same_expert": float(np.mean(q == d)), "chance": float(p_query @ p_doc)}
