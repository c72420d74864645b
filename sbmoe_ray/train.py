"""Distributed SB-MoE fine-tuning: a plain PyTorch loop inside Ray Train's ``TorchTrainer``.

Read top to bottom: :class:`TrainConfig` (every knob, validated before Ray starts), the data each worker
sees (:func:`epoch_batches`), the per-worker loop (:func:`train_worker`, with a session that is Ray Train
or, for the cached fast path, this process), and the driver (:func:`fit`) that launches the workers, then
evaluates the best checkpoint on the test datasets.

Distributed semantics: the global batch of B pairs is split into W contiguous shards of B/W; passage
embeddings are all-gathered *with gradient*, so every query sees all B passages as negatives and W
workers compute exactly the gradient of one worker with batch B (DDP averages the per-worker means).
The load-balancing loss is per worker (as in Switch Transformer). With a frozen encoder (``encoder_lr = 0``
or ``freeze_encoder``) the encoder runs once per text into :mod:`sbmoe_ray.embedding_cache` and the
workers train the SB-MoE head on cached pooled embeddings; with one worker that happens in the calling
process (:attr:`TrainConfig.in_process`), as Ray Train's start-up would cost 20x the training.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sbmoe_ray.backbones import hidden_size, load_tokenizer, set_attention_dropout
from sbmoe_ray.cluster import check_shared_storage, cluster_address, init_ray
from sbmoe_ray.config import ConfigBase, load_config
from sbmoe_ray.data import BeirDataset, data_root, load_dataset, split_by_query, training_pairs
from sbmoe_ray.embedding_cache import PooledEmbeddingCache
from sbmoe_ray.errors import ConfigError
from sbmoe_ray.evaluate import (PRECISIONS, EncodeSettings, EvaluationResult, autocast, evaluate, evaluate_pooled,
                                exact_search)
from sbmoe_ray.losses import InBatchNegativesLoss, load_balancing_loss
from sbmoe_ray.metrics import evaluate_run
from sbmoe_ray.model import (BiEncoder, EncoderInput, EncoderOutput, ModelConfig, build_bi_encoder, load_model,
                             load_weights, save_model)
from sbmoe_ray.moe import ExpertLoad

CHECKPOINT_METRICS = {"val_loss": "min", "val_accuracy": "max", "val_ndcg@10": "max", "train_loss": "min"}
TRAIN_STATE_FILE = "train_state.pt"
PLACEMENT_STRATEGIES = ("SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK")


@dataclass
class TrainConfig(ConfigBase):
    model: ModelConfig = field(default_factory=ModelConfig)
    train_dataset: str = "scifact"
    train_split: str = "train"
    test_datasets: list[str] = field(default_factory=lambda: ["scifact"])
    test_split: str = "test"
    data_dir: str | None = None
    epochs: int = 1
    max_steps_per_epoch: int | None = None   # cut epochs short (smoke runs, benchmarks)
    batch_size: int = 64                 # global: split evenly over the workers
    query_max_length: int = 64
    encoder_lr: float = 1e-6             # paper: 1e-6 for the encoder ...
    moe_lr: float = 1e-4                 # ... and 1e-4 for the SB-MoE block
    weight_decay: float = 0.01
    warmup_steps: int = 0
    grad_clip: float = 1.0               # max gradient norm; 0 disables clipping
    temperature: float = 0.05
    load_balancing: float = 0.01         # coefficient of the Switch load-balancing loss; 0 disables it
    precision: str = "bf16"              # autocast for training and evaluation: "bf16" or "fp32"
    gradient_checkpointing: bool = False
    grad_cache_chunk: int = 0            # > 0: cached-gradient training (GradCache), encoding this many texts
                                         # at a time: the whole batch's loss at one chunk's activation memory
    attention_dropout: float | None = 0.0  # dropout on attention probabilities while training; null keeps
                                         # the base model's (0.1 for BERT), which is 2x slower on CPU
    freeze_encoder: bool = False         # also implied by encoder_lr == 0
    embedding_cache: bool = True         # frozen encoder: train/evaluate from cached pooled embeddings
    cache_dir: str | None = None         # where the cache lives; default <storage_path>/embedding_cache
    validation_fraction: float = 0.05
    validation_retrieval_docs: int = 0   # > 0: each epoch, nDCG@10 of the held-out queries over their
                                         # positives plus this many random documents (0 disables)
    checkpoint_metric: str = "val_loss"
    seed: int = 0
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    placement_strategy: str = "SPREAD"   # Train workers across nodes: SPREAD (best effort), PACK, STRICT_*
    max_failures: int = 1
    dashboard: bool = True               # a local Ray's dashboard (with ray[default]); false saves ~0.2 GiB
    storage_path: str = "results/ray"
    name: str = "sbmoe-train"
    eval_batch_size: int = 32

    @property
    def frozen(self) -> bool:
        return self.freeze_encoder or self.encoder_lr == 0

    @property
    def uses_cache(self) -> bool:
        return self.frozen and self.embedding_cache

    @property
    def in_process(self) -> bool:
        """One worker on cached embeddings trains in the calling process, without Ray Train: its worker
        group takes ~10 s to start, the whole training on cached embeddings well under a second."""
        return self.uses_cache and self.num_workers == 1

    @property
    def run_dir(self) -> Path:
        return Path(self.storage_path) / self.name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self, where: str = "config") -> None:
        self.model.validate(f"{where}.model")
        if self.max_steps_per_epoch is not None and (not isinstance(self.max_steps_per_epoch, int)
                                                     or self.max_steps_per_epoch < 1):
            raise ConfigError(f"{where}.max_steps_per_epoch={self.max_steps_per_epoch!r}: must be a positive "
                              "integer or null")
        positive_ints = ("epochs", "batch_size", "query_max_length", "num_workers", "eval_batch_size")
        for key in positive_ints:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{where}.{key}={value!r}: must be a positive integer")
        for key in ("encoder_lr", "moe_lr", "weight_decay", "grad_clip", "load_balancing"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or math.isnan(value):
                raise ConfigError(f"{where}.{key}={value!r}: must be a number >= 0")
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise ConfigError(f"{where}.temperature={self.temperature!r}: must be a number > 0")
        if self.moe_lr == 0 and self.model.num_experts > 0:
            raise ConfigError(f"{where}.moe_lr=0: the SB-MoE block would never train; use a value > 0")
        if self.frozen and self.model.num_experts == 0:
            raise ConfigError(f"{where}: a frozen encoder (encoder_lr=0 or freeze_encoder) with "
                              "model.num_experts=0 has nothing to train; that is the zero-shot model "
                              "(sbmoe evaluate)")
        if self.batch_size % self.num_workers:
            raise ConfigError(f"{where}.batch_size={self.batch_size}: must be a multiple of "
                              f"num_workers={self.num_workers} (each worker takes an equal shard)")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{where}.precision={self.precision!r}: allowed values are {PRECISIONS}")
        if self.checkpoint_metric not in CHECKPOINT_METRICS:
            raise ConfigError(f"{where}.checkpoint_metric={self.checkpoint_metric!r}: allowed values are "
                              f"{sorted(CHECKPOINT_METRICS)}")
        if not 0 <= self.validation_fraction < 1:
            raise ConfigError(f"{where}.validation_fraction={self.validation_fraction!r}: allowed range is [0, 1)")
        if self.checkpoint_metric == "val_ndcg@10" and not self.validation_retrieval_docs:
            raise ConfigError(f"{where}.checkpoint_metric='val_ndcg@10': needs validation_retrieval_docs > 0")
        if not isinstance(self.validation_retrieval_docs, int) or self.validation_retrieval_docs < 0:
            raise ConfigError(f"{where}.validation_retrieval_docs={self.validation_retrieval_docs!r}: "
                              "must be an integer >= 0")
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise ConfigError(f"{where}.placement_strategy={self.placement_strategy!r}: allowed values are "
                              f"{PLACEMENT_STRATEGIES}")
        if not isinstance(self.grad_cache_chunk, int) or isinstance(self.grad_cache_chunk, bool) \
                or self.grad_cache_chunk < 0:
            raise ConfigError(f"{where}.grad_cache_chunk={self.grad_cache_chunk!r}: must be an integer >= 0 "
                              "(0 disables cached-gradient training)")
        if self.grad_cache_chunk and self.frozen:
            raise ConfigError(f"{where}.grad_cache_chunk={self.grad_cache_chunk}: needs a trained encoder "
                              "(encoder_lr > 0); a frozen encoder keeps no activations to save")
        if self.attention_dropout is not None and not (isinstance(self.attention_dropout, (int, float))
                                                       and 0 <= self.attention_dropout < 1):
            raise ConfigError(f"{where}.attention_dropout={self.attention_dropout!r}: allowed range is [0, 1), "
                              "or null for the base model's own value")
        if not self.cpus_per_worker > 0:
            raise ConfigError(f"{where}.cpus_per_worker={self.cpus_per_worker!r}: must be > 0")


def load_train_config(path: Path, overrides: list[str] = ()) -> TrainConfig:
    """A TrainConfig from a YAML file plus ``key=value`` overrides; errors name ``file:line`` and the key."""
    return load_config(TrainConfig, path, overrides)


# ----------------------------------------------------------------------------------------------------
# What each worker sees


def epoch_batches(num_pairs: int, global_batch: int, rank: int, world: int, seed: int, epoch: int,
                  shuffle: bool = True) -> list[np.ndarray]:
    """This worker's shard of every full global batch of an epoch (the last partial batch is dropped).

    The permutation depends only on (seed, epoch), so W workers together see exactly the batches one
    worker would see, and a resumed run replays the same order.
    """
    order = np.random.default_rng([seed, epoch]).permutation(num_pairs) if shuffle else np.arange(num_pairs)
    per_worker = global_batch // world
    return [order[start + rank * per_worker: start + (rank + 1) * per_worker]
            for start in range(0, num_pairs - global_batch + 1, global_batch)]


@dataclass
class PairData:
    """Training and validation pairs, and how to turn ids into model inputs (tokens or cached embeddings)."""

    train: list[tuple[str, str]]
    validation: list[tuple[str, str]]
    query_input: Callable[[list[str]], EncoderInput]
    passage_input: Callable[[list[str]], EncoderInput]
    dataset: BeirDataset


def _pairs(cfg: TrainConfig, dataset: BeirDataset) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    return split_by_query(training_pairs(dataset.qrels), cfg.validation_fraction, cfg.seed)


def _cached_lookup(ids: list[str], pooled: np.ndarray) -> Callable[[list[str]], torch.Tensor]:
    row = {i: n for n, i in enumerate(ids)}
    table = torch.from_numpy(pooled)
    return lambda batch_ids: table[[row[i] for i in batch_ids]]


def embedding_cache(cfg: TrainConfig) -> PooledEmbeddingCache:
    settings = EncodeSettings(batch_size=cfg.eval_batch_size, max_length=cfg.model.max_length,
                              precision=cfg.precision, progress=True)
    return PooledEmbeddingCache(Path(cfg.cache_dir or Path(cfg.storage_path) / "embedding_cache"), cfg.model, settings)


def pair_data(cfg: TrainConfig, device: torch.device) -> PairData:
    dataset = load_dataset(cfg.train_dataset, cfg.train_split, cfg.data_dir)
    train, validation = _pairs(cfg, dataset)
    query_ids, doc_ids = list(dataset.queries), list(dataset.corpus)
    if cfg.uses_cache:
        cache = embedding_cache(cfg)
        queries = _cached_lookup(query_ids, cache.get([dataset.queries[q] for q in query_ids], cfg.query_max_length))
        docs = _cached_lookup(doc_ids, cache.get([dataset.corpus[d].full_text for d in doc_ids], cfg.model.max_length))
        return PairData(train, validation, lambda ids: queries(ids).to(device), lambda ids: docs(ids).to(device),
                        dataset)
    tokenizer = load_tokenizer(cfg.model.base_model)

    def tokenize(texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}

    return PairData(train, validation,
                    lambda ids: tokenize([dataset.queries[i] for i in ids], cfg.query_max_length),
                    lambda ids: tokenize([dataset.corpus[i].full_text for i in ids], cfg.model.max_length), dataset)


# ----------------------------------------------------------------------------------------------------
# The per-worker loop


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: TrainConfig) -> BiEncoder:
    """The model a worker trains: a backbone-less head on the cached path, the full bi-encoder otherwise."""
    torch.manual_seed(cfg.seed)
    if cfg.uses_cache:
        return build_bi_encoder(cfg.model, frozen_encoder=True, hidden_size=hidden_size(cfg.model.base_model))
    model = build_bi_encoder(cfg.model, frozen_encoder=cfg.frozen)
    if cfg.attention_dropout is not None:
        set_attention_dropout(model.backbone, cfg.attention_dropout)
    if cfg.gradient_checkpointing:
        model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def build_optimizer(model: BiEncoder, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    groups = []
    if model.backbone is not None and not cfg.frozen:
        groups.append({"params": list(model.backbone.parameters()), "lr": cfg.encoder_lr, "name": "encoder"})
    if model.head is not None:
        groups.append({"params": list(model.head.parameters()), "lr": cfg.moe_lr, "name": "sbmoe"})
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    warmup = cfg.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
    return optimizer, scheduler


def _all_sum(tensor: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        torch.distributed.all_reduce(tensor)
    return tensor


class _GatherWithGradient(torch.autograd.Function):
    """All-gather equal shards along dim 0; backward sums every worker's gradient for this worker's shard."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = torch.distributed.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad)
        return grad[ctx.rank * ctx.rows: (ctx.rank + 1) * ctx.rows]


def _gather(tensor: torch.Tensor, world: int) -> torch.Tensor:
    return _GatherWithGradient.apply(tensor) if world > 1 else tensor


def _log_progress(cfg: TrainConfig, event: str, **values: Any) -> None:
    """Append one JSON line to ``<run_dir>/progress.jsonl`` (epoch starts, and ends with their metrics)."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    with open(cfg.run_dir / "progress.jsonl", "a") as f:
        f.write(json.dumps({"event": event, "time": time.time(), "pid": os.getpid(), "node_id": _node_id(),
                            **values}) + "\n")


def _node_id() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def read_progress(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "progress.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def epoch_history(run_dir: Path) -> list[dict[str, Any]]:
    """Metrics per epoch; an epoch that ran again after a failure counts once (its last run)."""
    ends = {e["epoch"]: e["metrics"] for e in read_progress(run_dir) if e["event"] == "epoch_end"}
    return [ends[epoch] for epoch in sorted(ends)]


def batch_loss(out: EncoderOutput, criterion: InBatchNegativesLoss, cfg: TrainConfig, rank: int,
               world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Contrastive loss over every worker's passages (+ load balancing), and the in-batch accuracy."""
    loss, accuracy = criterion(out.queries, _gather(out.passages, world), offset=rank * len(out.queries))
    if out.routing is not None and cfg.load_balancing > 0:
        loss = loss + cfg.load_balancing * load_balancing_loss(out.routing)
    return loss, accuracy


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _chunks(batch: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    """Row chunks of a token batch, each cut to its own longest text."""
    chunks = []
    for start in range(0, len(batch["input_ids"]), size):
        mask = batch["attention_mask"][start: start + size]
        width = int(mask.sum(dim=1).max())
        chunks.append({"input_ids": batch["input_ids"][start: start + size, :width], "attention_mask": mask[:, :width]})
    return chunks


def cached_gradient_backward(model: BiEncoder, queries: dict[str, torch.Tensor], passages: dict[str, torch.Tensor],
                             cfg: TrainConfig, device: torch.device,
                             loss_of: Callable[[EncoderOutput], tuple[torch.Tensor, torch.Tensor]]):
    """Backward of the whole batch's loss at the activation memory of ``cfg.grad_cache_chunk`` texts.

    GradCache (Gao, Zhang, Han, Callan 2021, arXiv 2101.06983): (1) pool every chunk without a graph,
    (2) run the head and the loss on the pooled embeddings and backpropagate to them, (3) re-encode each
    chunk with a graph and backpropagate its slice of those gradients. The RNG state of each chunk's first
    pass is replayed in the second, so dropout masks match and the gradient is the full batch's.
    Returns the batch's output, loss and accuracy; gradients are accumulated into ``model``.
    """
    chunks = _chunks(queries, cfg.grad_cache_chunk) + _chunks(passages, cfg.grad_cache_chunk)
    states, pooled = [], []
    with torch.no_grad(), autocast(device.type, cfg.precision):
        for chunk in chunks:
            states.append(_rng_state(device))
            pooled.append(model.pool(chunk["input_ids"], chunk["attention_mask"]))
    cached = torch.cat(pooled).requires_grad_()
    rows = len(queries["input_ids"])
    with autocast(device.type, cfg.precision):
        embeddings, routing = model.project(cached)
        out = EncoderOutput(embeddings[:rows], embeddings[rows:], routing)
        loss, accuracy = loss_of(out)
    loss.backward()
    after = _rng_state(device)
    for chunk, state, grad in zip(chunks, states, cached.grad.split([len(p) for p in pooled])):
        _set_rng_state(state, device)
        with autocast(device.type, cfg.precision):
            model.pool(chunk["input_ids"], chunk["attention_mask"]).backward(grad)
    _set_rng_state(after, device)
    return out, loss.detach(), accuracy


def _average_gradients(model: torch.nn.Module, world: int) -> None:
    """What DDP does after backward, for the cached-gradient path (which bypasses DDP's forward)."""
    if world == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    torch.distributed.all_reduce(flat)
    flat /= world
    for p, part in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(part.view_as(p))


def run_epoch(model: torch.nn.Module, data: PairData, pairs: list[tuple[str, str]], cfg: TrainConfig, rank: int,
              world: int, epoch: int, device: torch.device, optimizer=None, scheduler=None) -> dict[str, Any]:
    """One pass over ``pairs``: training when an optimizer is given, else validation (no gradient)."""
    training = optimizer is not None
    criterion = InBatchNegativesLoss(cfg.temperature)
    bare = getattr(model, "module", model)
    load = ExpertLoad.empty(bare.head.num_experts) if bare.head is not None else None
    global_batch = cfg.batch_size if training else min(cfg.batch_size, len(pairs) // world * world)
    batches = epoch_batches(len(pairs), global_batch, rank, world, cfg.seed, epoch, shuffle=training) if global_batch else []
    if training and cfg.max_steps_per_epoch:
        batches = batches[: cfg.max_steps_per_epoch]
    sums = torch.zeros(3, dtype=torch.float64)                          # loss, accuracy, steps
    step_seconds = []
    model.train(training)
    start = time.perf_counter()
    for index in batches:
        step_start = time.perf_counter()
        queries = data.query_input([pairs[i][0] for i in index])
        passages = data.passage_input([pairs[i][1] for i in index])
        if training:
            optimizer.zero_grad(set_to_none=True)
        if training and cfg.grad_cache_chunk:
            out, loss, accuracy = cached_gradient_backward(bare, queries, passages, cfg, device,
                                                           lambda o: batch_loss(o, criterion, cfg, rank, world))
            _average_gradients(bare, world)
        else:
            with torch.set_grad_enabled(training), autocast(device.type, cfg.precision):
                out = model(queries, passages)
                loss, accuracy = batch_loss(out, criterion, cfg, rank, world)
            if training:
                loss.backward()
        if training:
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
        sums += torch.tensor([loss.item(), accuracy.item(), 1.0], dtype=torch.float64)
        if load is not None:
            load.update(out.routing)
        step_seconds.append(time.perf_counter() - step_start)
    seconds = time.perf_counter() - start
    sums = _all_sum(sums.to(device), world).cpu()
    prefix = "train" if training else "val"
    steps = max(sums[2].item(), 1.0)
    metrics = {f"{prefix}_loss": sums[0].item() / steps, f"{prefix}_accuracy": sums[1].item() / steps}
    if training:
        metrics.update(train_seconds=seconds, pairs_per_second=len(batches) * cfg.batch_size / max(seconds, 1e-9),
                       step_seconds_median=float(np.median(step_seconds)) if step_seconds else float("nan"))
        if device.type == "cuda":
            metrics["cuda_peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if load is not None:
        merged = ExpertLoad.from_tensor(_all_sum(load.to_tensor().to(device), world).cpu())
        metrics.update({f"{prefix}_load.{k}": v for k, v in merged.summary().items()})
    return metrics


@torch.inference_mode()
def validation_ndcg(model: BiEncoder, data: PairData, cfg: TrainConfig, device: torch.device) -> float:
    """nDCG@10 of the held-out queries against their positives plus ``validation_retrieval_docs`` others."""
    query_ids = sorted({q for q, _ in data.validation})
    positives = {d for _, d in data.validation}
    others = sorted(set(data.dataset.corpus) - positives)
    sample = random.Random(cfg.seed).sample(others, min(cfg.validation_retrieval_docs, len(others)))
    doc_ids = sorted(positives) + sample
    model.eval()

    def embed(ids: list[str], to_input: Callable[[list[str]], EncoderInput]) -> np.ndarray:
        parts = []
        for start in range(0, len(ids), cfg.eval_batch_size):
            with autocast(device.type, cfg.precision):
                parts.append(model.embed_inputs(to_input(ids[start: start + cfg.eval_batch_size]))[0].float().cpu())
        return torch.cat(parts).numpy()

    run = exact_search(embed(doc_ids, data.passage_input), doc_ids, embed(query_ids, data.query_input), query_ids, k=10)
    qrels = {q: data.dataset.qrels[q] for q in query_ids}
    return evaluate_run(qrels, run).means["ndcg@10"]


def save_checkpoint(folder: Path, model: BiEncoder, cfg: TrainConfig, optimizer, scheduler, epoch: int) -> None:
    save_model(model, cfg.model, folder)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}},
               folder / TRAIN_STATE_FILE)


def restore_checkpoint(folder: Path, model: BiEncoder, optimizer, scheduler) -> int:
    """Load weights, optimizer, scheduler and RNG state; return the epoch to start from."""
    state = torch.load(folder / TRAIN_STATE_FILE, map_location="cpu", weights_only=False)
    load_weights(model, folder)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return state["epoch"] + 1


class RayTrainSession:
    """What a Ray Train worker needs from Train: its rank, device, checkpoint to resume from, and reporting."""

    def __init__(self, cfg: TrainConfig) -> None:
        import ray.train
        import ray.train.torch
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()     # the load report lists the pooler weights we leave out on purpose
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()

    def resume(self, model: BiEncoder, optimizer, scheduler) -> int:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if not checkpoint:
            return 0
        with checkpoint.as_directory() as folder:
            return restore_checkpoint(Path(folder), model, optimizer, scheduler)

    def wrap(self, model: BiEncoder) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)   # DDP when world > 1

    def report(self, metrics: dict[str, Any], folder: Path | None) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None)


class LocalCheckpoints:
    """An in-process run's checkpoints in its run folder (``checkpoint_epoch_NNNN``): the best and the latest."""

    METRICS_FILE = "metrics.json"

    def __init__(self, cfg: TrainConfig) -> None:
        self.root, self.metric, self.mode = cfg.run_dir, cfg.checkpoint_metric, CHECKPOINT_METRICS[cfg.checkpoint_metric]

    def all(self) -> list[tuple[Path, dict[str, Any]]]:
        folders = sorted(self.root.glob("checkpoint_epoch_*"))
        return [(f, json.loads((f / self.METRICS_FILE).read_text())) for f in folders if (f / self.METRICS_FILE).is_file()]

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        return (self.all() or [None])[-1]

    def best(self) -> tuple[Path, dict[str, Any]]:
        sign = 1 if self.mode == "min" else -1      # an epoch without the metric ranks last
        return min(self.all(), key=lambda item: (self.metric not in item[1], sign * item[1].get(self.metric, 0.0)))

    def add(self, folder: Path, metrics: dict[str, Any]) -> None:
        """Copy a checkpoint in (written under a temporary name, then renamed), then drop all but best and latest."""
        target = self.root / f"checkpoint_epoch_{metrics['epoch']:04d}"
        staging = self.root / f".{target.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(folder, staging)
        (staging / self.METRICS_FILE).write_text(json.dumps(metrics, default=str))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        keep = {self.best()[0], target}
        for old, _ in self.all():
            if old not in keep:
                shutil.rmtree(old)


class InProcessSession:
    """The session of a run that trains in the calling process (:attr:`TrainConfig.in_process`)."""

    rank, world = 0, 1

    def __init__(self, cfg: TrainConfig, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.device = torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
        self.checkpoints, self.on_epoch = LocalCheckpoints(cfg), on_epoch

    def resume(self, model: BiEncoder, optimizer, scheduler) -> int:
        latest = self.checkpoints.latest()
        return restore_checkpoint(latest[0], model, optimizer, scheduler) if latest else 0

    def wrap(self, model: BiEncoder) -> torch.nn.Module:
        return model

    def report(self, metrics: dict[str, Any], folder: Path | None) -> None:
        self.checkpoints.add(folder, metrics)
        if self.on_epoch:
            self.on_epoch(metrics)


def train_worker(cfg: TrainConfig, session: RayTrainSession | InProcessSession) -> None:
    """The training loop of one worker: restore, then per epoch train, validate, checkpoint, report."""
    rank, world, device = session.rank, session.world, session.device
    seed_everything(cfg.seed)
    data = pair_data(cfg, device)
    # On the device before the optimizer exists: a restored optimizer state follows its parameters' device.
    model = build_model(cfg).to(device)
    optimizer, scheduler = build_optimizer(model, cfg)
    start_epoch = session.resume(model, optimizer, scheduler)
    if start_epoch and rank == 0:
        print(f"[{cfg.name}] resuming from the checkpoint of epoch {start_epoch}/{cfg.epochs} in {cfg.run_dir}",
              flush=True)
    model = session.wrap(model)
    bare = getattr(model, "module", model)

    for epoch in range(start_epoch, cfg.epochs):
        if rank == 0:
            _log_progress(cfg, "epoch_start", epoch=epoch, device=str(device))
        metrics = {"epoch": epoch, **run_epoch(model, data, data.train, cfg, rank, world, epoch, device, optimizer, scheduler)}
        if data.validation:
            metrics.update(run_epoch(model, data, data.validation, cfg, rank, world, epoch, device))
            if cfg.validation_retrieval_docs:   # every rank computes it: cheap, and no rank waits idle
                metrics["val_ndcg@10"] = validation_ndcg(bare, data, cfg, device)
        if rank == 0:
            _log_progress(cfg, "epoch_end", epoch=epoch, metrics=metrics)
            print(f"[{cfg.name}] epoch {epoch + 1}/{cfg.epochs}  train_loss {metrics['train_loss']:.4f}  "
                  f"val_loss {metrics.get('val_loss', float('nan')):.4f}  "
                  f"{metrics['pairs_per_second']:.1f} pairs/s", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                save_checkpoint(Path(folder), bare, cfg, optimizer, scheduler, epoch)
            session.report(metrics, Path(folder) if rank == 0 else None)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry point on each worker."""
    cfg = TrainConfig.from_dict(config)
    train_worker(cfg, RayTrainSession(cfg))


# ----------------------------------------------------------------------------------------------------
# The driver


@dataclass
class FitResult:
    config: TrainConfig
    history: list[dict[str, Any]]            # one row of metrics per epoch
    best_checkpoint: str
    best_metrics: dict[str, Any]
    last_checkpoint: str
    test: list[EvaluationResult]             # of the best checkpoint

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "history": self.history, "best_checkpoint": self.best_checkpoint,
                "best_metrics": self.best_metrics, "last_checkpoint": self.last_checkpoint,
                "test": [r.to_dict() for r in self.test]}


def evaluate_checkpoint(folder: Path, cfg: TrainConfig, datasets: list[BeirDataset],
                        threads: int | None = None) -> list[EvaluationResult]:
    """Test metrics of a checkpoint on every dataset (through the embedding cache when frozen)."""
    if threads:
        torch.set_num_threads(threads)
    if cfg.uses_cache:
        model, _ = load_model(folder, with_backbone=False)
        cache = embedding_cache(cfg)
        return [evaluate_pooled(model, ds,
                                cache.get([ds.corpus[d].full_text for d in ds.corpus], cfg.model.max_length, ds.name),
                                cache.get([ds.queries[q] for q in ds.queries], cfg.query_max_length, ds.name))
                for ds in datasets]
    model, _ = load_model(folder)
    device = "cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(cfg.model.base_model)
    settings = EncodeSettings(batch_size=cfg.eval_batch_size, max_length=cfg.model.max_length, precision=cfg.precision,
                              device=device)
    return [evaluate(model.to(device), tokenizer, ds, settings) for ds in datasets]


def evaluate_best(folder: Path, cfg: TrainConfig, datasets: list[BeirDataset]) -> list[EvaluationResult]:
    """Evaluate with the resources the trial's workers just released, not in its 0.25-CPU driver.

    On the cached path evaluation is a matrix product and runs here. Otherwise it is a Ray task holding
    the workers' CPUs (and one GPU with ``use_gpu``), wherever the cluster has them.
    """
    if cfg.uses_cache:
        return evaluate_checkpoint(folder, cfg, datasets)
    import ray

    cpus = cfg.num_workers * cfg.cpus_per_worker
    # "DEFAULT": outside a Tune trial's placement group (its one bundle is the driver's 0.25 CPU), as Ray
    # Train schedules its own actors.
    task = ray.remote(num_cpus=cpus, num_gpus=1 if cfg.use_gpu else 0, max_retries=1,
                      scheduling_strategy="DEFAULT")(evaluate_checkpoint)
    return ray.get(task.remote(folder, cfg, datasets, threads=max(1, int(cpus))))


def resolved(cfg: TrainConfig) -> TrainConfig:
    """Model defaults filled in from the base model's folder, paths made absolute (workers run elsewhere)."""
    return replace(cfg, model=cfg.model.resolved(), storage_path=str(Path(cfg.storage_path).resolve()),
                   data_dir=str(data_root(cfg.data_dir).resolve()),
                   cache_dir=str(Path(cfg.cache_dir).resolve()) if cfg.cache_dir else None)


def prepare(cfg: TrainConfig) -> tuple[TrainConfig, list[BeirDataset]]:
    """Everything that can fail cheaply, before Ray starts: config, datasets, model files, cache entries.

    Returns the config the workers get (:func:`resolved`).
    """
    cfg.validate()
    cfg = resolved(cfg)
    hidden_size(cfg.model.base_model)              # the base model exists (clear error otherwise)
    train = load_dataset(cfg.train_dataset, cfg.train_split, cfg.data_dir)
    tests = [load_dataset(name, cfg.test_split, cfg.data_dir) for name in cfg.test_datasets]
    if len(_pairs(cfg, train)[0]) < cfg.batch_size:
        raise ConfigError(f"config.batch_size={cfg.batch_size}: larger than the {len(_pairs(cfg, train)[0])} "
                          f"training pairs of {cfg.train_dataset!r} ({cfg.train_split})")
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.uses_cache:
        cache = embedding_cache(cfg)
        for ds in [train, *tests]:
            cache.get([ds.corpus[d].full_text for d in ds.corpus], cfg.model.max_length, f"{ds.name} corpus")
            cache.get([ds.queries[q] for q in ds.queries], cfg.query_max_length, f"{ds.name} queries")
    return cfg, tests


def fit(cfg: TrainConfig, address: str | None = None, callbacks: list | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None) -> FitResult:
    """Train, evaluate the best checkpoint on the test datasets, write ``<run_dir>/results.json``.

    Ray Train workers train, unless the run is :attr:`TrainConfig.in_process`. ``callbacks`` are Ray Train
    callbacks (a Tune trial passes one that forwards each epoch to Tune); ``on_epoch`` is called here with
    each epoch's metrics by an in-process run.
    """
    import ray

    if not cfg.in_process and not ray.is_initialized() and cluster_address(address):
        # A cluster: connect first, so that storage the other nodes cannot see is refused before any work.
        cfg.validate()
        init_ray(address, 0)
        check_shared_storage([Path(cfg.storage_path).resolve(), embedding_cache(cfg).root.resolve()])
    cfg, tests = prepare(cfg)
    if cfg.in_process:
        session = InProcessSession(cfg, on_epoch)
        train_worker(cfg, session)
        (best, best_metrics), last = session.checkpoints.best(), session.checkpoints.latest()[0]
    else:
        best, best_metrics, last = fit_ray_train(cfg, address, callbacks)
    test = evaluate_best(best, cfg, tests)
    fitted = FitResult(cfg, epoch_history(cfg.run_dir), str(best), best_metrics, str(last), test)
    (cfg.run_dir / "results.json").write_text(json.dumps(fitted.to_dict(), indent=2, default=str))
    return fitted


def fit_ray_train(cfg: TrainConfig, address: str | None, callbacks: list | None) -> tuple[Path, dict[str, Any], Path]:
    """Train with a ``TorchTrainer``; the best checkpoint's folder and metrics, and the last checkpoint's folder."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    init_ray(address, cfg.num_workers * cfg.cpus_per_worker + 1, cfg.dashboard)
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg.to_dict(),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=resources,
                                               placement_strategy=cfg.placement_strategy),
        run_config=ray.train.RunConfig(
            name=cfg.name, storage_path=str(Path(cfg.storage_path).resolve()), callbacks=callbacks or [],
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=cfg.checkpoint_metric,
                checkpoint_score_order=CHECKPOINT_METRICS[cfg.checkpoint_metric])))
    result = trainer.fit()
    best = result.get_best_checkpoint(cfg.checkpoint_metric, CHECKPOINT_METRICS[cfg.checkpoint_metric])
    best_metrics = next(m for c, m in result.best_checkpoints if c.path == best.path)
    # Storage is a local or shared file system (see resolved()), so checkpoint paths are folders here.
    return Path(best.path), best_metrics, Path(result.checkpoint.path)
