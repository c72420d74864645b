"""Test metrics of a trained model: from a checkpoint folder, or of the base model itself (zero-shot).

Three ways, chosen once by the driver (:func:`sbmoe_ray.train.testing.evaluation_for`): a frozen encoder is
tested through the embedding cache (the head applied to cached pooled embeddings: a matrix product), a model
trained at depth k through the token-state cache (its top k layers and head), any other model by encoding
every corpus with it (:func:`sbmoe_ray.evaluation.dense.evaluate`). Both are small picklable objects, so
the driver can run them as a Ray task with the resources the trial's workers just released.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from sbmoe_ray.data.beir import BeirDataset
from sbmoe_ray.evaluation.dense import EncodeSettings, EvaluationResult, evaluate, evaluate_pooled, evaluate_states
from sbmoe_ray.evaluation.embedding_cache import PooledEmbeddingCache, dataset_embeddings
from sbmoe_ray.model.backbones import hidden_size, load_tokenizer
from sbmoe_ray.model.bi_encoder import BiEncoder, build_bi_encoder, load_model
from sbmoe_ray.model.config import ModelConfig


@dataclass
class CachedEvaluation:
    """A frozen encoder: the head (if any) on cached pooled embeddings of every corpus and its queries."""

    model: ModelConfig
    settings: EncodeSettings
    query_max_length: int
    cache_dir: str
    identical_ids: dict[str, str] = field(default_factory=dict)    # dataset name -> rule (default auto)
    runs_here = True                # a matrix product: no need for a Ray task of its own

    def load(self, folder: Path | None) -> BiEncoder:
        if folder is None:          # zero-shot: the base model as it is, without a backbone
            return build_bi_encoder(self.model, frozen_encoder=True, hidden_size=hidden_size(self.model.base_model))
        return load_model(folder, with_backbone=False)[0]

    def __call__(self, folder: Path | None, datasets: list[BeirDataset], threads: int | None = None
                 ) -> list[EvaluationResult]:
        model, cache = self.load(folder), PooledEmbeddingCache(Path(self.cache_dir), self.model, self.settings)
        return [evaluate_pooled(model, ds, *dataset_embeddings(cache, ds, self.query_max_length),
                                identical_ids=self.identical_ids.get(ds.name, "auto")) for ds in datasets]


@dataclass
class LayerEvaluation:
    """A model trained at depth k: its top k layers and head on the cached token states below them
    (:mod:`sbmoe_ray.evaluation.state_cache`), the same numbers as encoding every corpus with the whole model."""

    model: ModelConfig
    settings: EncodeSettings
    query_max_length: int
    cache_dir: str
    trained_layers: int
    identical_ids: dict[str, str] = field(default_factory=dict)    # dataset name -> rule (default auto)
    runs_here = False               # the top layers over every corpus: a Ray task with the workers' resources

    def load(self, folder: Path | None) -> BiEncoder:
        if folder is None:
            return build_bi_encoder(self.model, trained_layers=self.trained_layers)
        return load_model(folder)[0]

    def __call__(self, folder: Path | None, datasets: list[BeirDataset], threads: int | None = None
                 ) -> list[EvaluationResult]:
        from sbmoe_ray.evaluation.state_cache import LayerStateCache

        if threads:
            torch.set_num_threads(threads)
        model = self.load(folder).to(self.settings.device)
        cache = LayerStateCache(Path(self.cache_dir), self.model, self.settings, self.trained_layers)
        return [evaluate_states(model, ds, cache, self.settings, self.query_max_length,
                                identical_ids=self.identical_ids.get(ds.name, "auto")) for ds in datasets]


@dataclass
class LiveEvaluation:
    """Any model: encode every corpus and its queries with it (at ``settings.max_length``), on the
    settings' device."""

    model: ModelConfig
    settings: EncodeSettings
    identical_ids: dict[str, str] = field(default_factory=dict)    # dataset name -> rule (default auto)
    runs_here = False               # encoding: a Ray task with the workers' resources

    def load(self, folder: Path | None) -> BiEncoder:
        return build_bi_encoder(self.model, frozen_encoder=True) if folder is None else load_model(folder)[0]

    def __call__(self, folder: Path | None, datasets: list[BeirDataset], threads: int | None = None
                 ) -> list[EvaluationResult]:
        if threads:
            torch.set_num_threads(threads)
        model, tokenizer = self.load(folder).to(self.settings.device), load_tokenizer(self.model.base_model)
        return [evaluate(model, tokenizer, ds, self.settings, identical_ids=self.identical_ids.get(ds.name, "auto"))
                for ds in datasets]
