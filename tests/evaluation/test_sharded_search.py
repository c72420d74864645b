"""Sharded exact search equals one flat FAISS index (ids and scores, ties aside) and stays under its memory
setting, on a synthetic 1M x 384 corpus; HNSW and IVF recall@100 against exact search is measured."""

from __future__ import annotations

import tracemalloc

import faiss
import numpy as np
import pytest

from sbmoe_ray.evaluation.sharded.search import (
    ShardedCorpus,
    block_rows,
    build_index,
    choose_index,
    exact_topk,
    recall_at_k,
    to_run,
    write_shards,
)


def unit_rows(rng, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def flat_reference(vectors: np.ndarray, queries: np.ndarray, k: int):
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index.search(queries, k)


def assert_same_topk(scores, rows, ref_scores, ref_rows):
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    same = (rows == ref_rows).mean()
    assert same > 0.999, same                       # ties aside: equal scores may swap places


def test_sharded_exact_search_equals_a_flat_index_on_uneven_shards(tmp_path):
    rng = np.random.default_rng(0)
    vectors, queries = unit_rows(rng, 20_000, 64), unit_rows(rng, 50, 64)
    corpus = ShardedCorpus(write_shards(tmp_path / "c", [f"d{i}" for i in range(20_000)], vectors, 7_001))
    scores, rows = exact_topk(corpus, queries, k=101, memory_bytes=2 * 2**20)      # many small blocks
    ref_scores, ref_rows = flat_reference(vectors, queries, 101)
    assert_same_topk(scores, rows, ref_scores, ref_rows)
    run = to_run(scores, rows, corpus.ids(), [f"q{i}" for i in range(50)])
    assert len(run) == 50 and all(len(hits) == 101 for hits in run.values())
    assert next(iter(run["q0"])) == f"d{ref_rows[0, 0]}"
    with pytest.raises(ValueError, match="memory_bytes=1000: too small"):
        block_rows(1000, 64, 50, 101)


@pytest.mark.slow
def test_sharded_search_over_one_million_vectors_equals_flat_and_stays_under_its_memory_setting(tmp_path):
    rng = np.random.default_rng(1)
    n, dim, k, limit = 1_000_000, 384, 100, 64 * 2**20
    queries = unit_rows(rng, 100, dim)
    ids = [f"d{i}" for i in range(n)]
    vectors = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):                   # built in parts: the test's own peak stays modest
        vectors[start: start + 100_000] = unit_rows(rng, 100_000, dim)
    corpus = ShardedCorpus(write_shards(tmp_path / "big", ids, vectors, 250_000))
    ref_scores, ref_rows = flat_reference(vectors, queries, k)
    del vectors
    tracemalloc.start()
    scores, rows = exact_topk(corpus, queries, k, memory_bytes=limit)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < limit, f"peak {peak / 2**20:.1f} MiB over the {limit / 2**20:.0f} MiB setting"
    assert_same_topk(scores, rows, ref_scores, ref_rows)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_report_their_recall_at_100_against_exact_search(kind):
    rng = np.random.default_rng(2)
    # Clustered vectors, as embeddings are (uniform random vectors are the worst case for both indexes).
    centres = unit_rows(rng, 200, 128)
    vectors = centres[rng.integers(0, 200, 50_000)] + 0.3 * unit_rows(rng, 50_000, 128)
    queries = centres[rng.integers(0, 200, 100)] + 0.3 * unit_rows(rng, 100, 128)
    _, exact = flat_reference(vectors.astype(np.float32), queries.astype(np.float32), 100)
    _, approx = build_index(kind, vectors).search(np.ascontiguousarray(queries, dtype=np.float32), 100)
    recall = recall_at_k(approx, exact, 100)
    print(f"{kind} recall@100 = {recall:.3f}")
    assert 0.8 <= recall <= 1.0
    assert recall_at_k(exact, exact, 100) == 1.0


def test_auto_picks_flat_hnsw_then_ivf_by_corpus_size():
    assert [choose_index("auto", n) for n in (5_000, 2_700_000, 8_800_000)] == ["flat", "hnsw", "ivf"]
    with pytest.raises(ValueError, match="index='annoy'"):
        choose_index("annoy", 10)
