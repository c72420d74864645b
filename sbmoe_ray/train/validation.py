"""The validation objective of a run: every held-out pair counted once, and nothing but retrieval in it.

A study ranks configurations by ``val_loss`` (or ``val_accuracy``, ``val_ndcg@10``), so the number must
mean the same for every configuration and every way of running it. Two things used to break that (issue
21): validation kept only full global batches (97 held-out SciFact pairs at batch 64 gave one batch, and 26
of the 81 held-out queries never counted), and ``val_loss`` included the SB-MoE router's load-balancing
term, which a baseline has not (with every expert active at inference it added exactly +0.01), so the
objective partly ranked router balance and penalised SB-MoE against plain fine-tuning.

Here every held-out (query, positive) pair is embedded once (in chunks of ``memory.eval_batch_size``) and
the run's contrastive loss is taken over the whole set at once: each held-out query against every held-out
positive, the others being its negatives (in-batch negatives with the whole validation set as the batch).
The number does not depend on the batch size, the chunking or the worker count (every worker computes it
on the same pairs), and carries no load-balancing term; the router's balance is reported beside it
(``val_load.*``). ``validation_ndcg`` is the retrieval view: nDCG@10 of the held-out queries over their
positives plus ``data.validation_retrieval_docs`` sampled documents. :func:`validate` is both, as every
epoch reports them; :func:`base_model_validation` gives the same numbers for the untrained base model (the
``zero_shot`` baseline), so a study can answer "no head" when validation prefers it.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from sbmoe_ray.data.beir import identical_id_queries
from sbmoe_ray.evaluation.dense import exact_search
from sbmoe_ray.evaluation.metrics import evaluate_run
from sbmoe_ray.model.bi_encoder import BiEncoder
from sbmoe_ray.model.moe import ExpertLoad
from sbmoe_ray.runtime.precision import autocast
from sbmoe_ray.train.config import TrainConfig
from sbmoe_ray.train.inputs import PairData


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


@torch.inference_mode()
def validation_metrics(model: BiEncoder, data: PairData, criterion: torch.nn.Module, cfg: TrainConfig,
                       device: torch.device) -> dict[str, Any]:
    """``val_loss`` and ``val_accuracy`` over every held-out pair at once, and the router's load on them."""
    model.eval()
    load = ExpertLoad.empty(model.head.num_experts) if model.head is not None else None
    queries = _embed(model, [q for q, _ in data.validation], data.query_input, cfg, device, load)
    passages = _embed(model, [d for _, d in data.validation], data.passage_input, cfg, device, load)
    loss, accuracy = criterion(queries, passages, offset=0)
    metrics = {"val_loss": float(loss), "val_accuracy": float(accuracy), "val_pairs": len(data.validation),
               "val_queries": len({q for q, _ in data.validation})}
    if load is not None:
        metrics.update({f"val_load.{k}": v for k, v in load.summary().items()})
    return metrics


@torch.inference_mode()
def validation_ndcg(model: BiEncoder, data: PairData, cfg: TrainConfig, device: torch.device) -> float:
    """nDCG@10 of the held-out queries against their positives plus ``validation_retrieval_docs`` others."""
    query_ids = sorted({q for q, _ in data.validation})
    positives = {d for _, d in data.validation}
    others = sorted(set(data.dataset.corpus) - positives)
    sample = random.Random(cfg.data.split_seed).sample(others, min(cfg.data.validation_retrieval_docs, len(others)))
    doc_ids = sorted(positives) + sample
    model.eval()

    def embed(ids: list[str], to_input) -> np.ndarray:
        return _embed(model, ids, to_input, cfg, device).cpu().numpy()

    run = exact_search(embed(doc_ids, data.passage_input), doc_ids, embed(query_ids, data.query_input), query_ids, k=10)
    drop = identical_id_queries(data.dataset, cfg.data.identical_ids.get(data.dataset.name, "auto"))
    return evaluate_run({q: data.dataset.qrels[q] for q in query_ids}, run, ignore_identical_ids=drop).means["ndcg@10"]


def validate(model: BiEncoder, data: PairData, criterion: torch.nn.Module, cfg: TrainConfig,
             device: torch.device) -> dict[str, Any]:
    """Every validation metric of a run at this point: the loss view, and nDCG@10 when configured."""
    metrics = validation_metrics(model, data, criterion, cfg, device)
    if cfg.data.validation_retrieval_docs:
        metrics["val_ndcg@10"] = validation_ndcg(model, data, cfg, device)
    return metrics


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
