"""The validation objective of a run: every held-out pair counted once, and nothing but retrieval in it.

A study ranks configurations by ``val_loss`` (or ``val_accuracy``, ``val_ndcg@10``), so the number must
mean the same for every configuration and every way of running it. Two things used to break that (issue
21): validation kept only full global batches (97 held-out SciFact pairs at batch 64 gave one batch, and 26
of the 81 held-out queries never counted), and ``val_loss`` included the SB-MoE router's load-balancing
term, which a baseline has not (with every expert active at inference it added exactly +0.01), so the
objective partly ranked router balance and penalised SB-MoE against plain fine-tuning.

Here every held-out query and positive is embedded once (in chunks of ``memory.eval_batch_size``; with W
workers each embeds every W-th text and they gather the rest, so validation costs a worker 1/W of the texts)
and the run's contrastive loss is taken over the whole set of held-out pairs at once: each held-out query
against every held-out positive, the others being its negatives (in-batch negatives with the whole
validation set as the batch).
The number does not depend on the batch size, the chunking or the worker count (every worker ends with
the same embeddings), and carries no load-balancing term; the router's balance is reported beside it
(``val_load.*``). The retrieval view: nDCG@10 of the held-out queries over their
positives plus ``data.validation_retrieval_docs`` sampled documents, for the best checkpoint only (the training
loop asks for it once, after the last epoch; every epoch where it is the checkpoint metric). :func:`validate`
gives both; :func:`base_model_validation` gives the same numbers for the untrained base model (the
``zero_shot`` baseline), so a study can answer "no head" when validation prefers it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch

from sbmoe_ray.data.beir import identical_id_queries
from sbmoe_ray.evaluation.dense import exact_search
from sbmoe_ray.evaluation.metrics import evaluate_run
from sbmoe_ray.model.bi_encoder import BiEncoder
from sbmoe_ray.model.moe import ExpertLoad
from sbmoe_ray.runtime.precision import autocast
from sbmoe_ray.train.config import TrainConfig
from sbmoe_ray.train.inputs import PairData
from sbmoe_ray.train.step import all_sum


def _embed(model: BiEncoder, ids: list[str], to_input, cfg: TrainConfig, device: torch.device,
           load: ExpertLoad | None = None) -> torch.Tensor:
    parts, size = [], cfg.memory.eval_batch_size
    for start in range(0, len(ids), size):
        with autocast(device.type, cfg.memory.precision):
            embeddings, routing = model.embed_inputs(to_input(ids[start: start + size]))
        parts.append(embeddings.float())
        if load is not None and routing is not None:
            load.update(routing)
    return torch.cat(parts)


def _embed_shared(model: BiEncoder, ids: list[str], to_input, cfg: TrainConfig, device: torch.device,
                  rank: int, world: int, load: ExpertLoad | None) -> torch.Tensor:
    """``ids`` embedded in order, each of ``world`` workers encoding every world-th text and all of them
    gathering the rest (each worker's router load counts its own share)."""
    if world == 1 or len(ids) < world:
        return _embed(model, ids, to_input, cfg, device, load if rank == 0 else None)
    mine = _embed(model, ids[rank::world], to_input, cfg, device, load)
    rows = -(-len(ids) // world)
    padded = torch.zeros(rows, mine.shape[1], device=mine.device)
    padded[: len(mine)] = mine
    parts = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded)
    out = torch.empty(len(ids), mine.shape[1], device=mine.device)
    for r, part in enumerate(parts):
        out[r::world] = part[: len(ids[r::world])]
    return out


def _retrieval_sample(data: PairData, cfg: TrainConfig, positives: list[str]) -> list[str]:
    """The ``validation_retrieval_docs`` corpus documents that are no held-out positive (seeded, fixed)."""
    if not cfg.data.validation_retrieval_docs:
        return []
    others = sorted(set(data.dataset.corpus) - set(positives))
    return random.Random(cfg.data.split_seed).sample(others, min(cfg.data.validation_retrieval_docs, len(others)))


def _ndcg(queries: torch.Tensor, query_ids: list[str], docs: torch.Tensor, doc_ids: list[str], data: PairData,
          cfg: TrainConfig) -> float:
    """nDCG@10 of the held-out queries against their positives plus the sampled documents."""
    run = exact_search(docs.cpu().numpy(), doc_ids, queries.cpu().numpy(), query_ids, k=10)
    drop = identical_id_queries(data.dataset, cfg.data.identical_ids.get(data.dataset.name, "auto"))
    return evaluate_run({q: data.dataset.qrels[q] for q in query_ids}, run, ignore_identical_ids=drop).means["ndcg@10"]


def validate(model: BiEncoder, data: PairData, criterion: torch.nn.Module, cfg: TrainConfig,
             device: torch.device, rank: int = 0, world: int = 1) -> dict[str, Any]:
    """Every validation metric of a run at this point (:func:`validate_pairs` without the per-pair values)."""
    return validate_pairs(model, data, criterion, cfg, device, rank, world)[0]


def _per_pair(criterion: torch.nn.Module, queries: torch.Tensor, docs: torch.Tensor) -> dict[str, list[float]]:
    """Each held-out pair's loss and accuracy against every held-out positive (their means are ``val_loss``
    and ``val_accuracy`` for a mean-reduced loss): the values the stopping rule's paired noise is taken from."""
    rows = [criterion(queries[i: i + 1], docs, offset=i) for i in range(len(queries))]
    return {"val_loss": [float(loss) for loss, _ in rows], "val_accuracy": [float(acc) for _, acc in rows]}


@torch.inference_mode()
def validate_pairs(model: BiEncoder, data: PairData, criterion: torch.nn.Module, cfg: TrainConfig,
                   device: torch.device, rank: int = 0, world: int = 1,
                   retrieval: Callable[[dict[str, Any]], bool] | None = None, per_pair: bool = True,
                   ) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Every validation metric of a run at this point: ``val_loss`` and ``val_accuracy`` over every held-out
    pair at once, the router's load on the held-out queries and positives, and nDCG@10 when configured (and
    ``retrieval``, given the other metrics, says so: the loop asks for it only where the checkpoint is a new
    best, the one that may be tested); and, with ``per_pair``, the loss and accuracy of each held-out pair.
    Each held-out text is embedded once, its share by each of ``world`` workers."""
    model.eval()
    load = ExpertLoad.empty(model.head.num_experts) if model.head is not None else None
    query_ids, positives = sorted({q for q, _ in data.validation}), sorted({d for _, d in data.validation})
    queries = _embed_shared(model, query_ids, data.query_input, cfg, device, rank, world, load)
    docs = _embed_shared(model, positives, data.passage_input, cfg, device, rank, world, load)
    q_row, d_row = {q: i for i, q in enumerate(query_ids)}, {d: i for i, d in enumerate(positives)}
    paired_queries = queries[[q_row[q] for q, _ in data.validation]]
    paired_docs = docs[[d_row[d] for _, d in data.validation]]
    loss, accuracy = criterion(paired_queries, paired_docs, offset=0)
    pairs = _per_pair(criterion, paired_queries, paired_docs) if per_pair else {}
    metrics = {"val_loss": float(loss), "val_accuracy": float(accuracy), "val_pairs": len(data.validation),
               "val_queries": len(query_ids)}
    if load is not None:
        merged = ExpertLoad.from_tensor(all_sum(load.to_tensor().to(device), world).cpu())
        metrics.update({f"val_load.{k}": v for k, v in merged.summary().items()})
    sample = _retrieval_sample(data, cfg, positives)
    if sample and (retrieval is None or retrieval(metrics)):
        docs = torch.cat([docs, _embed_shared(model, sample, data.passage_input, cfg, device, rank, world, None)])
        metrics["val_ndcg@10"] = _ndcg(queries, query_ids, docs, positives + sample, data, cfg)
    return metrics, pairs


def base_model_validation(cfg: TrainConfig) -> dict[str, Any]:
    """The validation metrics of the base model as it is (the ``zero_shot`` route: nothing trains), on the
    same held-out pairs and with the same loss as every trained configuration."""
    from sbmoe_ray.model.losses import build_loss
    from sbmoe_ray.train.routes import ROUTES

    device = torch.device("cuda" if cfg.scaling.use_gpu and torch.cuda.is_available() else "cpu")
    route = ROUTES["cached_head" if cfg.uses_cache else "live"]
    data = route.inputs(cfg, device)
    if not data.validation:
        return {}
    model = route.model(cfg).to(device)
    return validate(model, data, build_loss(cfg.loss.name, cfg.loss.temperature), cfg, device)
