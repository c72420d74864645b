"""What each worker sees: its shard of every global batch, and ids turned into model inputs.

The permutation of an epoch depends only on (seed, epoch), so W workers together see exactly the batches
one worker would see, and a resumed run replays the same order. Inputs are token batches (the encoder
runs) or, on the ``cached_head`` route, rows of the cached pooled embeddings of a frozen encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from sbmoe_ray.data.beir import BeirDataset, load_dataset, training_pairs
from sbmoe_ray.data.splits import split_by_query, subsample_queries, validation_half
from sbmoe_ray.evaluation.dense import EncodeSettings
from sbmoe_ray.evaluation.embedding_cache import PooledEmbeddingCache, dataset_embeddings
from sbmoe_ray.model.backbones import load_tokenizer
from sbmoe_ray.model.bi_encoder import EncoderInput
from sbmoe_ray.model.depth import HiddenStates
from sbmoe_ray.train.config import TrainConfig

Pairs = list[tuple[str, str]]


def epoch_batches(num_pairs: int, global_batch: int, rank: int, world: int, seed: int, epoch: int,
                  shuffle: bool = True) -> list[np.ndarray]:
    """This worker's shard of every full global batch of an epoch (the last partial batch is dropped)."""
    order = np.random.default_rng([seed, epoch]).permutation(num_pairs) if shuffle else np.arange(num_pairs)
    per_worker = global_batch // world
    return [order[start + rank * per_worker: start + (rank + 1) * per_worker]
            for start in range(0, num_pairs - global_batch + 1, global_batch)]


def split_pairs(cfg: TrainConfig, dataset: BeirDataset) -> tuple[Pairs, Pairs]:
    """Training and validation (query, positive) pairs; the split is by query and depends on
    ``data.split_seed`` only, so the replicates of a study (other ``run.seed``) validate on the same queries;
    with ``data.train_fraction`` < 1 each run trains on that share of the training queries, drawn by its seed."""
    train, validation = split_by_query(training_pairs(dataset.qrels), cfg.data.validation_fraction, cfg.data.split_seed)
    return (subsample_queries(train, cfg.data.train_fraction, cfg.run.seed),
            validation_half(validation, cfg.data.validation_part, cfg.data.split_seed))


@dataclass
class PairData:
    """Training and validation pairs, and how to turn ids into model inputs (tokens or cached embeddings)."""

    train: Pairs
    validation: Pairs
    query_input: Callable[[list[str]], EncoderInput]
    passage_input: Callable[[list[str]], EncoderInput]          # as validated and tested (model.max_length)
    dataset: BeirDataset
    train_passage_input: Callable[[list[str]], EncoderInput] | None = None   # training's, when shorter

    def training_passages(self, ids: list[str]) -> EncoderInput:
        """A training batch's passages (``data.train_passage_max_length`` where set)."""
        return (self.train_passage_input or self.passage_input)(ids)


def embedding_cache(cfg: TrainConfig, progress: bool = True) -> PooledEmbeddingCache:
    """The run's cache of pooled embeddings (``cfg`` resolved: precision and model defaults filled in)."""
    settings = EncodeSettings(batch_size=cfg.memory.eval_batch_size, max_length=cfg.model.max_length,
                              precision=cfg.memory.precision, progress=progress)
    return PooledEmbeddingCache(cfg.cache_dir, cfg.model, settings)


def state_cache(cfg: TrainConfig, progress: bool = True):
    """The run's cache of token states below its trained layers (``cfg`` resolved; ``cached_layers`` route)."""
    from sbmoe_ray.evaluation.state_cache import LayerStateCache

    settings = EncodeSettings(batch_size=cfg.memory.eval_batch_size, max_length=cfg.model.max_length,
                              precision=cfg.memory.precision, progress=progress)
    return LayerStateCache(cfg.cache_dir, cfg.model, settings, cfg.depth)


def layer_inputs(cfg: TrainConfig, device: torch.device) -> PairData:
    """Inputs of the ``cached_layers`` route: batches of the cached token states below the trained layers."""
    from sbmoe_ray.evaluation.state_cache import dataset_states, state_lookup

    dataset = load_dataset(cfg.data.train_dataset, cfg.data.train_split, cfg.data.data_dir)
    cache = state_cache(cfg)
    docs, queries = dataset_states(cache, dataset, cfg.data.query_max_length)
    short = cfg.data.train_passage_max_length
    doc_ids = list(dataset.corpus)
    train_docs = (state_lookup(doc_ids, cache.get([d.full_text for d in dataset.corpus.values()], short,
                                                  f"{dataset.name} corpus"), device) if short else None)
    return PairData(*split_pairs(cfg, dataset), state_lookup(list(dataset.queries), queries, device),
                    state_lookup(doc_ids, docs, device), dataset, train_docs)


def _lookup(ids: list[str], pooled: np.ndarray, device: torch.device) -> Callable[[list[str]], torch.Tensor]:
    row = {i: n for n, i in enumerate(ids)}
    table = torch.from_numpy(pooled)
    return lambda batch_ids: table[[row[i] for i in batch_ids]].to(device)


def cached_inputs(cfg: TrainConfig, device: torch.device) -> PairData:
    """Inputs of the ``cached_head`` route: rows of the frozen encoder's cached pooled embeddings."""
    dataset = load_dataset(cfg.data.train_dataset, cfg.data.train_split, cfg.data.data_dir)
    docs, queries = dataset_embeddings(embedding_cache(cfg), dataset, cfg.data.query_max_length)
    return PairData(*split_pairs(cfg, dataset), _lookup(list(dataset.queries), queries, device),
                    _lookup(list(dataset.corpus), docs, device), dataset)


def token_inputs(cfg: TrainConfig, device: torch.device) -> PairData:
    """Inputs of the routes that run the encoder: padded token batches on ``device``."""
    dataset = load_dataset(cfg.data.train_dataset, cfg.data.train_split, cfg.data.data_dir)
    tokenizer = load_tokenizer(cfg.model.base_model)

    def tokenize(texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}

    def passages(length: int | None):
        return lambda ids: tokenize([dataset.corpus[i].full_text for i in ids], length)

    short = cfg.data.train_passage_max_length
    return PairData(*split_pairs(cfg, dataset),
                    lambda ids: tokenize([dataset.queries[i] for i in ids], cfg.data.query_max_length),
                    passages(cfg.model.max_length), dataset, passages(short) if short else None)


def token_count(inputs: EncoderInput) -> tuple[int, int]:
    """(tokens, texts) in a batch of token inputs or cached token states; (0, 0) for cached pooled embeddings."""
    if isinstance(inputs, torch.Tensor):
        return 0, 0
    mask = inputs.attention_mask if isinstance(inputs, HiddenStates) else inputs["attention_mask"]
    return int(mask.sum()), len(mask)
