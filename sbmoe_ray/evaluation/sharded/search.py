"""Search that scales past one process's memory: exact top-k over corpus shards merged into the global
top-k, and approximate indexes (HNSW, IVF) with their recall measured against exact search.

The paper's zero-shot sets reach 5.4M documents (FEVER, Climate-FEVER): 7.7 GB of 384-d fp32 vectors, 15 GB
at 768-d, in one process with a flat index. Here a corpus's embeddings live in shard files (raw fp32 rows,
one ``.npy`` per shard, with its doc ids and a manifest); exact search reads a block of rows at a time,
scores it against the queries, keeps each query's top k of the block, and merges the partial lists into
the global top k. That is BEIR's exact search (top k+1 per 50k-document chunk, merged with a heap) and
Tevatron's per-shard search + merge; the result equals one flat index (ties aside). Memory per process:
one block of rows, its score matrix and the running top-k lists, bounded by ``memory_bytes``.

Approximate search (FAISS): ``hnsw`` (IndexHNSWFlat, inner product) or ``ivf`` (IndexIVFFlat, inner
product, nlist ~ 4 sqrt(n)), chosen by corpus size when ``auto`` (FAISS's guidelines: flat for small
corpora, HNSW to a few million, IVF beyond); its recall@k against exact search is measured on a sample of
queries and reported with the metrics, so a study knows what the approximation cost.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sbmoe_ray.evaluation.config import INDEX_KINDS

MANIFEST = "manifest.json"


def write_shards(folder: Path, doc_ids: Sequence[str], embeddings: np.ndarray, shard_rows: int) -> Path:
    """Embeddings as shard files of at most ``shard_rows`` rows, with their ids and a manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for number, start in enumerate(range(0, len(doc_ids), shard_rows)):
        name = f"shard_{number:05d}"
        block = np.ascontiguousarray(embeddings[start: start + shard_rows], dtype=np.float32)
        np.save(folder / f"{name}.npy", block)
        (folder / f"{name}.ids.json").write_text(json.dumps(list(doc_ids[start: start + shard_rows])))
        shards.append({"name": name, "rows": len(block)})
    manifest = {"dim": int(embeddings.shape[1]), "rows": len(doc_ids), "shards": shards}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return folder


@dataclass
class ShardedCorpus:
    """A corpus's embeddings in shard files, read a block of rows at a time (no memory map: the pages of
    a mapped file would stay resident)."""

    folder: Path

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.manifest = json.loads((self.folder / MANIFEST).read_text())

    @property
    def dim(self) -> int:
        return self.manifest["dim"]

    def ids(self) -> list[str]:
        files = [self.folder / f"{s['name']}.ids.json" for s in self.manifest["shards"]]
        return [i for file in files for i in json.loads(file.read_text())]

    def blocks(self, max_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first global row, fp32 rows) blocks of at most ``max_rows`` rows, shard by shard."""
        first = 0
        for shard in self.manifest["shards"]:
            path = self.folder / f"{shard['name']}.npy"
            with open(path, "rb") as handle:
                np.lib.format.read_magic(handle)
                np.lib.format.read_array_header_1_0(handle)
                offset = handle.tell()
            for start in range(0, shard["rows"], max_rows):
                count = min(max_rows, shard["rows"] - start)
                block = np.fromfile(path, dtype=np.float32, count=count * self.dim,
                                    offset=offset + start * self.dim * 4).reshape(count, self.dim)
                yield first + start, block
            first += shard["rows"]


def block_rows(memory_bytes: int, dim: int, num_queries: int, k: int) -> int:
    """Rows per block so that the block, its scores and the top-k lists stay under ``memory_bytes``."""
    fixed = num_queries * (dim * 4 + k * 48)                # queries; running, block and merged top-k lists
    per_row = dim * 4 + num_queries * 16                    # the row; per query its score (4 bytes) and the
    #                                                         partition's int64 index (8), with headroom
    rows = (memory_bytes - fixed) // per_row
    if rows < 1:
        raise ValueError(f"memory_bytes={memory_bytes}: too small for {num_queries} queries at k={k}; "
                         f"allow at least {fixed + per_row} bytes or search fewer queries at a time")
    return int(rows)


def merge_topk(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's top k of the candidate (score, row) pairs, best first (ties: lower row first)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(scores, scores.shape[1] - k, axis=1)[:, -k:]     # the k largest (no negated copy)
    top_scores, top_rows = np.take_along_axis(scores, part, 1), np.take_along_axis(rows, part, 1)
    order = np.lexsort((top_rows, -top_scores), axis=1)
    return np.take_along_axis(top_scores, order, 1), np.take_along_axis(top_rows, order, 1)


def exact_topk(corpus: ShardedCorpus, queries: np.ndarray, k: int, memory_bytes: int = 512 * 2**20
               ) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top k over every shard: (scores, global rows), each [queries, k]."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    for first, block in corpus.blocks(block_rows(memory_bytes, corpus.dim, len(queries), k)):
        scores = queries @ block.T
        rows = np.broadcast_to(np.arange(first, first + len(block), dtype=np.int64), scores.shape)
        block_scores, block_rows_ = merge_topk(scores, rows, k)
        del scores
        best_scores, best_rows = merge_topk(np.hstack([best_scores, block_scores]),
                                            np.hstack([best_rows, block_rows_]), k)
    return best_scores, best_rows


def choose_index(kind: str, rows: int) -> str:
    """``auto``: flat up to 200k vectors, HNSW up to 5M, IVF beyond (FAISS's index guidelines)."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"index={kind!r}: allowed are {list(INDEX_KINDS)}")
    if kind != "auto":
        return kind
    return "flat" if rows <= 200_000 else "hnsw" if rows <= 5_000_000 else "ivf"


def build_index(kind: str, vectors: np.ndarray, seed: int = 0):
    """A FAISS inner-product index of ``kind`` (flat, hnsw, ivf) over ``vectors``."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction, index.hnsw.efSearch = 80, 256
    elif kind == "ivf":
        nlist = max(1, int(4 * math.sqrt(n)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = vectors[np.random.default_rng(seed).choice(n, min(n, 64 * nlist), replace=False)]
        index.train(sample)
        index.nprobe = max(1, nlist // 16)
    else:
        raise ValueError(f"index={kind!r}: allowed are flat, hnsw, ivf")
    index.add(vectors)
    return index


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray, k: int) -> float:
    """Mean over queries of |approximate top k ∩ exact top k| / k."""
    hits = [len(set(a[:k].tolist()) & set(e[:k].tolist())) / k for a, e in zip(approx_rows, exact_rows)]
    return float(np.mean(hits)) if hits else math.nan


def to_run(scores: np.ndarray, rows: np.ndarray, doc_ids: Sequence[str], query_ids: Sequence[str]) -> dict:
    """A pytrec_eval run ({query id: {doc id: score}}) from global rows, as the single-index path writes it."""
    return {qid: {doc_ids[r]: float(s) for r, s in zip(row, score) if np.isfinite(s)}
            for qid, row, score in zip(query_ids, rows, scores)}
