"""Exact dense-retrieval evaluation: length-sorted batched encoding, FAISS inner-product search, metrics.

Texts are tokenized once, sorted by token length and padded per batch, so short texts do not pay for
long ones. With ``precision="bf16"`` the encoder runs under bf16 autocast (CPUs with AVX-512 BF16 or AMX,
or a GPU; see :mod:`sbmoe_ray.runtime.precision`); the embeddings and the search stay float32. Scores are inner
products: cosine when the model normalises.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from sbmoe_ray.data.beir import BeirDataset, identical_id_queries
from sbmoe_ray.errors import ConfigError
from sbmoe_ray.evaluation.metrics import RetrievalMetrics, Run, drop_identical, evaluate_run, ranked
from sbmoe_ray.evaluation.routing import empty_assignments, record_top1, routing_summary
from sbmoe_ray.model.bi_encoder import BiEncoder
from sbmoe_ray.model.moe import ExpertLoad
from sbmoe_ray.runtime.precision import autocast

RESOLVED_PRECISIONS = ("fp32", "bf16")
# How deep a ranking the metrics need: their deepest cut (Recall@100, MAP@100) plus one for a document
# that the identical-id rule drops (BEIR's exact search keeps k + 1 for the same reason). Deeper rankings
# give the same values at ~5x the search and scoring time.
RANKING_DEPTH = 101


@dataclass
class EncodeSettings:
    batch_size: int = 32  # measured fastest on a 2-core CPU (cache-bound); raise it on a GPU
    max_length: int = 256
    precision: str = "fp32"
    device: str = "cpu"
    progress: bool = True

    def validate(self, where: str = "evaluation", max_positions: int | None = None) -> None:
        if max_positions is not None and self.max_length > max_positions:
            raise ConfigError(f"{where}.max_length={self.max_length}: the base model has only {max_positions} "
                              f"positions; allowed range is [1, {max_positions}]")
        if self.precision not in RESOLVED_PRECISIONS:
            raise ConfigError(f"{where}.precision={self.precision!r}: allowed values are {RESOLVED_PRECISIONS} "
                              "(resolve 'auto' with sbmoe_ray.runtime.precision.resolve_precision first)")
        for key in ("batch_size", "max_length"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}.{key}={value!r}: must be a positive integer")


def tokenize_sorted(tokenizer, texts: Sequence[str], max_length: int) -> tuple[list[list[int]], np.ndarray]:
    """Token ids of every text (truncated) and the order that sorts them longest first."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
    order = np.argsort([-len(x) for x in ids], kind="stable")
    return ids, order


def pad_batch(batch: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(x) for x in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@torch.inference_mode()
def encode(model: BiEncoder, tokenizer, texts: Sequence[str], settings: EncodeSettings, desc: str = "encode",
           expert_load: ExpertLoad | None = None,
           forward: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, object]] | None = None,
           top1: np.ndarray | None = None) -> np.ndarray:
    """Embed ``texts`` (float32, in input order). ``forward`` defaults to ``model.embed`` (pooled + head);
    ``top1``, if given, receives each text's top-1 expert (:mod:`sbmoe_ray.evaluation.routing`)."""
    model.eval()
    forward = forward or (lambda batch: model.embed(batch["input_ids"], batch["attention_mask"]))
    ids, order = tokenize_sorted(tokenizer, texts, settings.max_length)

    def batch_of(index: np.ndarray) -> dict[str, torch.Tensor]:
        padded = pad_batch([ids[i] for i in index], tokenizer.pad_token_id)
        return {k: v.to(settings.device) for k, v in padded.items()}

    out = embed_in_order(order, batch_of, forward, settings, desc, expert_load, top1)
    return out if out is not None else np.empty((0, 0), dtype=np.float32)


def embed_in_order(order: np.ndarray, batch_of: Callable, forward: Callable, settings: EncodeSettings, desc: str,
                   expert_load: ExpertLoad | None = None, top1: np.ndarray | None = None) -> np.ndarray | None:
    """The embeddings of ``len(order)`` texts in their input order, computed in batches of
    ``settings.batch_size`` taken in ``order`` (longest first: little padding); ``batch_of(index)`` makes a
    batch's input, ``forward(input)`` gives ``(embeddings, routing)``. None when there is no text."""
    out: np.ndarray | None = None
    with tqdm(total=len(order), desc=desc, unit="text", disable=not settings.progress) as bar:
        for start in range(0, len(order), settings.batch_size):
            index = order[start: start + settings.batch_size]
            with autocast(settings.device, settings.precision):
                emb, routing = forward(batch_of(index))
            if out is None:
                out = np.empty((len(order), emb.shape[-1]), dtype=np.float32)
            out[index] = emb.float().cpu().numpy()
            if expert_load is not None and routing is not None:
                expert_load.update(routing)
            record_top1(top1, index, routing)
            bar.update(len(index))
    return out


def exact_search(doc_emb: np.ndarray, doc_ids: Sequence[str], query_emb: np.ndarray, query_ids: Sequence[str],
                 k: int = RANKING_DEPTH) -> Run:
    """Exact inner-product top-k with FAISS (``IndexFlatIP``)."""
    import faiss  # imported here: training workers never search

    index = faiss.IndexFlatIP(doc_emb.shape[1])
    index.add(np.ascontiguousarray(doc_emb, dtype=np.float32))
    scores, hits = index.search(np.ascontiguousarray(query_emb, dtype=np.float32), min(k, len(doc_ids)))
    return {qid: {doc_ids[j]: float(s) for j, s in zip(row_hits, row_scores) if j >= 0}
            for qid, row_hits, row_scores in zip(query_ids, hits, scores)}


@dataclass
class EvaluationResult:
    dataset: str
    split: str
    metrics: RetrievalMetrics
    expert_load: ExpertLoad | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"                    # where the encoder ran
    identical_ids: dict = field(default_factory=dict)   # the rule and how many queries it dropped a doc for
    search: dict = field(default_factory=dict)          # sharded path: index, recall@100 of an approximate one
    routing: dict = field(default_factory=dict)         # top-1 experts and query-document co-routing (heads only)
    run: Run | None = None                              # the top 100 as scored (a TREC run file; not in to_dict)

    def to_dict(self, per_query: bool = True) -> dict:
        result = {"dataset": self.dataset, "split": self.split, "num_queries": self.metrics.num_queries,
                  "metrics": self.metrics.means, "seconds": self.seconds, "device": self.device,
                  "identical_ids": self.identical_ids}
        if self.search:
            result["search"] = self.search
        if self.expert_load is not None:
            result["corpus_expert_load"] = self.expert_load.summary()
        if self.routing:   # the per-item assignments only with the per-query scores (not in Tune's reports)
            result["routing"] = self.routing if per_query else {
                k: v for k, v in self.routing.items() if k not in ("doc_top1", "query_top1")}
        if per_query:
            result["per_query"] = self.metrics.per_query
        return result


def _empty_load(model: BiEncoder) -> ExpertLoad | None:
    return ExpertLoad.empty(model.head.num_experts) if model.head is not None else None


def _search_and_score(dataset: BeirDataset, doc_emb: np.ndarray, query_emb: np.ndarray, load: ExpertLoad | None,
                      seconds: dict[str, float], k: int, device: str, identical_ids: str,
                      top1: tuple[np.ndarray, np.ndarray] | None = None) -> EvaluationResult:
    start = time.perf_counter()
    doc_ids, query_ids = list(dataset.corpus), list(dataset.queries)
    run = exact_search(doc_emb, doc_ids, query_emb, query_ids, k)
    seconds["search"] = time.perf_counter() - start
    dropped = identical_id_queries(dataset, identical_ids)
    metrics = evaluate_run(dataset.qrels, run, ignore_identical_ids=dropped)
    seconds["total"] = sum(seconds.values())
    routing = (routing_summary(dataset.qrels, doc_ids, top1[0], query_ids, top1[1], load.num_experts)
               if top1 is not None and load is not None else {})
    return EvaluationResult(dataset.name, dataset.split, metrics, load, seconds, device,
                            {"rule": identical_ids, "queries": len(dropped)}, routing=routing,
                            run=ranked(drop_identical(run, dropped), RANKING_DEPTH - 1))


def _top1_arrays(model: BiEncoder, dataset: BeirDataset) -> tuple[np.ndarray, np.ndarray] | None:
    docs = empty_assignments(model, len(dataset.corpus))
    return None if docs is None else (docs, empty_assignments(model, len(dataset.queries)))


def evaluate(model: BiEncoder, tokenizer, dataset: BeirDataset, settings: EncodeSettings,
             k: int = RANKING_DEPTH, identical_ids: str = "auto") -> EvaluationResult:
    """Encode corpus and judged queries, search exactly, and score the ranking against the qrels
    (``identical_ids``: the dataset's rule, :func:`sbmoe_ray.data.beir.identical_id_queries`)."""
    settings.validate(max_positions=getattr(model.backbone.config, "max_position_embeddings", None))
    load, top1 = _empty_load(model), _top1_arrays(model, dataset)
    start = time.perf_counter()
    doc_emb = encode(model, tokenizer, [d.full_text for d in dataset.corpus.values()], settings,
                     desc=f"{dataset.name} corpus", expert_load=load, top1=top1 and top1[0])
    encoded = time.perf_counter()
    query_emb = encode(model, tokenizer, list(dataset.queries.values()), settings, desc=f"{dataset.name} queries",
                       top1=top1 and top1[1])
    seconds = {"encode_corpus": encoded - start, "encode_queries": time.perf_counter() - encoded}
    return _search_and_score(dataset, doc_emb, query_emb, load, seconds, k, settings.device, identical_ids, top1)


@torch.inference_mode()
def project_pooled(model: BiEncoder, pooled: np.ndarray, batch_size: int = 4096,
                   expert_load: ExpertLoad | None = None, top1: np.ndarray | None = None) -> np.ndarray:
    """Apply the head (and normalisation) to pooled embeddings of a frozen encoder."""
    model.eval()
    parts = []
    for start in range(0, len(pooled), batch_size):
        emb, routing = model.project(torch.from_numpy(pooled[start: start + batch_size]))
        parts.append(emb.float().numpy())
        if expert_load is not None and routing is not None:
            expert_load.update(routing)
        record_top1(top1, slice(start, start + batch_size), routing)
    return np.concatenate(parts) if parts else np.empty((0, model.hidden_size), dtype=np.float32)


def evaluate_pooled(model: BiEncoder, dataset: BeirDataset, doc_pooled: np.ndarray, query_pooled: np.ndarray,
                    k: int = RANKING_DEPTH, identical_ids: str = "auto") -> EvaluationResult:
    """:func:`evaluate` for a frozen encoder, from cached pooled embeddings (corpus and query order)."""
    load, top1 = _empty_load(model), _top1_arrays(model, dataset)
    start = time.perf_counter()
    doc_emb = project_pooled(model, doc_pooled, expert_load=load, top1=top1 and top1[0])
    encoded = time.perf_counter()
    query_emb = project_pooled(model, query_pooled, top1=top1 and top1[1])
    seconds = {"encode_corpus": encoded - start, "encode_queries": time.perf_counter() - encoded}
    return _search_and_score(dataset, doc_emb, query_emb, load, seconds, k, "cpu", identical_ids, top1)


def evaluate_states(model: BiEncoder, dataset: BeirDataset, cache, settings: EncodeSettings, query_max_length: int,
                    k: int = RANKING_DEPTH, identical_ids: str = "auto") -> EvaluationResult:
    """:func:`evaluate` for a model trained at depth k: its top layers and head on the cached token states
    below them (``cache``: a :class:`~sbmoe_ray.evaluation.state_cache.LayerStateCache`, built where missing)."""
    from sbmoe_ray.evaluation.state_cache import dataset_states, embed_states

    docs, queries = dataset_states(cache, dataset, query_max_length)
    load, top1 = _empty_load(model), _top1_arrays(model, dataset)
    start = time.perf_counter()
    doc_emb = embed_states(model, docs, settings, f"{dataset.name} corpus", load, top1 and top1[0])
    encoded = time.perf_counter()
    query_emb = embed_states(model, queries, settings, f"{dataset.name} queries", None, top1 and top1[1])
    seconds = {"encode_corpus": encoded - start, "encode_queries": time.perf_counter() - encoded}
    return _search_and_score(dataset, doc_emb, query_emb, load, seconds, k, settings.device, identical_ids, top1)
