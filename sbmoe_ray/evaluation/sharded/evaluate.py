"""Testing a model on corpora of millions of documents: sharded encoding over Ray workers, then exact
sharded search (or an approximate index with its recall measured), then the same metrics as everywhere.

The single-process path (:func:`sbmoe_ray.evaluation.dense.evaluate`) holds a corpus's texts and vectors in one
process and searches a flat index: fine for SciFact, not for FEVER's 5.4M documents (the paper's zero-shot
setup, arXiv 2510.15683). Here the corpus file is encoded in shard files by W Ray tasks
(:mod:`sbmoe_ray.evaluation.sharded.encode`: streaming, resumable shard by shard, one worker's CPUs or one GPU each),
the judged queries likewise (one small shard), and the search reads the shards a block at a time
(:mod:`sbmoe_ray.evaluation.sharded.search`), so no process holds the corpus. With ``evaluation.index`` other than
``flat``, an HNSW/IVF index answers the queries and a sample of ``recall_queries`` queries is also searched
exactly: its recall@100 is reported with the metrics. The identical-id rule and the scoring are the
single-process path's (:func:`sbmoe_ray.data.beir.identical_id_queries`,
:func:`sbmoe_ray.evaluation.metrics.evaluate_run`),
so both paths give the same numbers (``tests/test_sharded_eval.py``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sbmoe_ray.data.beir import identical_id_queries
from sbmoe_ray.evaluation.checkpoint import LiveEvaluation
from sbmoe_ray.evaluation.config import EvaluationConfig
from sbmoe_ray.evaluation.dense import RANKING_DEPTH, EvaluationResult
from sbmoe_ray.evaluation.metrics import evaluate_run
from sbmoe_ray.evaluation.sharded.encode import encode_sharded
from sbmoe_ray.evaluation.sharded.search import (
    ShardedCorpus,
    build_index,
    choose_index,
    exact_topk,
    recall_at_k,
    to_run,
)

RECALL_DEPTH = 100


@dataclass
class ShardedEvaluation:
    """Test ``folder``'s model (None: the base model) on each dataset (a BeirDataset or BeirTopics: what
    is used is its name, path, split, queries and qrels). Submits its own Ray tasks: runs in the driver."""

    live: LiveEvaluation            # the model and encode settings, as the single-process path has them
    settings: EvaluationConfig
    root: str                       # shard folders, one per (model, weights, settings, corpus file)
    workers: int
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    runs_here = True

    def __call__(self, folder: Path | None, datasets: list, threads: int | None = None) -> list[EvaluationResult]:
        return [self.evaluate_one(folder, ds) for ds in datasets]

    def encode(self, folder: Path | None, file: Path) -> ShardedCorpus:
        return encode_sharded(self.live, folder, file, Path(self.root), self.workers, self.settings.shard_rows,
                              self.cpus_per_worker, self.use_gpu)

    def evaluate_one(self, folder: Path | None, dataset) -> EvaluationResult:
        start = time.perf_counter()
        print(f"[sharded] {dataset.name}: encoding the corpus with {self.workers} workers", flush=True)
        corpus = self.encode(folder, dataset.path / "corpus.jsonl")
        encoded = time.perf_counter()
        queries = self.encode(folder, write_queries(dataset, Path(self.root) / "queries"))
        query_ids, query_emb = queries.ids(), np.concatenate([b for _, b in queries.blocks(1 << 30)])
        searched = time.perf_counter()
        scores, rows, search = self.search(corpus, query_emb)
        seconds = {"encode_corpus": encoded - start, "encode_queries": searched - encoded,
                   "search": time.perf_counter() - searched}
        rule = self.live.identical_ids.get(dataset.name, "auto")
        dropped = identical_id_queries(dataset, rule)
        run = to_run(scores, rows, corpus.ids(), query_ids)
        metrics = evaluate_run(dataset.qrels, run, ignore_identical_ids=dropped)
        seconds["total"] = time.perf_counter() - start
        search.update(documents=corpus.manifest["rows"], shards=len(corpus.manifest["shards"]))
        return EvaluationResult(dataset.name, dataset.split, metrics, None, seconds, self.live.settings.device,
                                {"rule": rule, "queries": len(dropped)}, search)

    def search(self, corpus: ShardedCorpus, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        """Exact sharded top-k, or an approximate index plus its recall@100 on a sample of the queries."""
        memory = self.settings.search_memory_mb * 2**20
        kind = choose_index(self.settings.index, corpus.manifest["rows"])
        if kind == "flat":
            scores, rows = exact_topk(corpus, queries, RANKING_DEPTH, memory)
            return scores, rows, {"index": "exact (sharded)", "memory_mb": self.settings.search_memory_mb}
        vectors = np.concatenate([b for _, b in corpus.blocks(1 << 20)])
        index = build_index(kind, vectors)
        del vectors
        scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), RANKING_DEPTH)
        scores = np.where(rows >= 0, scores, -np.inf).astype(np.float32)
        sample = np.random.default_rng(0).choice(len(queries), min(len(queries), self.settings.recall_queries),
                                                 replace=False)
        _, exact_rows = exact_topk(corpus, queries[sample], RECALL_DEPTH, memory)
        recall = recall_at_k(rows[sample], exact_rows, RECALL_DEPTH)
        return scores, rows, {"index": kind, f"recall@{RECALL_DEPTH}": recall, "recall_queries": len(sample)}


def write_queries(dataset, folder: Path) -> Path:
    """The judged queries as a BEIR jsonl file (``text`` only), named by its content, written once."""
    lines = "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in dataset.queries.items())
    digest = hashlib.sha256(lines.encode()).hexdigest()[:16]
    path = Path(folder) / f"{dataset.name}.{dataset.split}.{digest}.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(lines)
        tmp.replace(path)
    return path
