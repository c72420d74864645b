"""Content-addressed cache of a frozen encoder's pooled embeddings: the fast route of a study (``cached_head``).

When the encoder is frozen, the SB-MoE head only ever sees ``pool(encoder(text))``. Those embeddings are
computed once per (base model weights, pooling, max length, precision, exact list of texts) and stored as
``<root>/<key[:2]>/<key>.npy``; every trial over experts, top-k or learning rate that needs the same texts
loads them in milliseconds. The key hashes the model files' contents, so a changed model never hits a
stale entry. Files are written to a temporary name and renamed, so concurrent trials never read half a file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from sbmoe_ray.evaluation.dense import EncodeSettings, encode
from sbmoe_ray.model.backbones import load_tokenizer, resolve_model
from sbmoe_ray.model.bi_encoder import BiEncoder, ModelConfig, build_bi_encoder

_MODEL_FILES = ("*.json", "*.safetensors", "*.bin", "*.txt")


def model_identity(base_model: str) -> str:
    """A hash of the model's files when it is a local folder, else its hub id (and the layer cut).

    Hashing a model's weights takes a fraction of a second; a trial asks several times, so the hash is
    kept per (files, sizes, modification times) for the life of the process."""
    spec = resolve_model(base_model)
    folder = Path(spec.source)
    files = sorted(p for pattern in _MODEL_FILES for p in folder.glob(pattern)) if folder.is_dir() else []
    return _identity(spec.source, spec.num_layers, tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns)
                                                         for p in files))


@lru_cache(maxsize=64)
def _identity(source: str, num_layers: int | None, files: tuple) -> str:
    digest = hashlib.sha256(f"{num_layers}".encode())
    for path, _, _ in files:
        digest.update(Path(path).name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    if not Path(source).is_dir():
        digest.update(source.encode())
    return digest.hexdigest()


def content_key(parts: Sequence, texts: Sequence[str]) -> str:
    """A cache entry's key: a hash of what computed it (``parts``) and of the exact list of texts."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(f"{part}\x00".encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\x00")
    return digest.hexdigest()


class PooledEmbeddingCache:
    """Pooled (pre-head) embeddings of a frozen base encoder, computed on first use and kept on disk."""

    def __init__(self, root: Path, config: ModelConfig, settings: EncodeSettings) -> None:
        self.root, self.config, self.settings = Path(root), config, settings
        self._model_id = model_identity(config.base_model)
        self._encoder: BiEncoder | None = None
        self._tokenizer = None

    def key(self, texts: Sequence[str], max_length: int) -> str:
        return content_key((self._model_id, self.config.pooling, str(max_length), self.settings.precision), texts)

    def path(self, texts: Sequence[str], max_length: int) -> Path:
        key = self.key(texts, max_length)
        return self.root / key[:2] / f"{key}.npy"

    def encoder(self) -> tuple[BiEncoder, object]:
        """The frozen base encoder (no head) and its tokenizer, loaded on first use."""
        if self._encoder is None:
            self._encoder = build_bi_encoder(ModelConfig(**{**vars(self.config), "num_experts": 0}),
                                             frozen_encoder=True).to(self.settings.device)
            self._tokenizer = load_tokenizer(self.config.base_model)
        return self._encoder, self._tokenizer

    def get(self, texts: Sequence[str], max_length: int, desc: str = "encode") -> np.ndarray:
        path = self.path(texts, max_length)
        if path.is_file():
            return _load(str(path), path.stat().st_mtime_ns)
        encoder, tokenizer = self.encoder()
        settings = EncodeSettings(**{**vars(self.settings), "max_length": max_length})
        pooled = encode(encoder, tokenizer, texts, settings, desc=f"{desc} (cache)",
                        forward=lambda batch: (encoder.pool(batch["input_ids"], batch["attention_mask"]), None))
        self.put(path, pooled)
        return pooled

    @staticmethod
    def put(path: Path, pooled: np.ndarray) -> None:
        """Write an entry under a temporary name, then rename it: readers never see half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy.tmp", delete=False) as tmp:
            np.save(tmp, pooled)
        os.replace(tmp.name, path)


@lru_cache(maxsize=32)
def _load(path: str, mtime_ns: int) -> np.ndarray:
    """A cache entry read once per process (entries are written once, then renamed into place; callers
    treat the array as read-only)."""
    return np.load(path)


def dataset_embeddings(cache: PooledEmbeddingCache, dataset, query_max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Pooled embeddings of a dataset's corpus and queries (in their order), from the cache or encoded now."""
    docs = cache.get([d.full_text for d in dataset.corpus.values()], cache.config.max_length, f"{dataset.name} corpus")
    queries = cache.get(list(dataset.queries.values()), query_max_length, f"{dataset.name} queries")
    return docs, queries


def _depth(cache: PooledEmbeddingCache) -> int | None:
    return resolve_model(cache.config.base_model).num_layers


def prefix_families(caches: list[PooledEmbeddingCache]) -> list[list[PooledEmbeddingCache]]:
    """Caches whose base models are layer prefixes of one model (``minilm-l3`` of ``minilm``), with the same
    pooling, max length and settings: one forward pass of the deepest fills them all."""
    groups: dict[tuple, list[PooledEmbeddingCache]] = {}
    for cache in caches:
        key = (resolve_model(cache.config.base_model).source, cache.config.pooling, cache.config.max_length,
               str(cache.root), tuple(sorted(vars(cache.settings).items())))
        groups.setdefault(key, []).append(cache)
    return [g for g in groups.values() if len({_depth(c) for c in g}) > 1]


def fill_family(family: list[PooledEmbeddingCache], texts: Sequence[str], max_length: int, desc: str) -> None:
    """Encode ``texts`` once with the deepest model of ``family`` and write every missing member's entry
    from its layer's hidden states (the cut model computes exactly those layers)."""
    missing = [c for c in family if not c.path(texts, max_length).is_file()]
    if len(missing) < 2:
        return
    deepest = max(family, key=lambda c: _depth(c) or 10**6)
    encoder, tokenizer = deepest.encoder()
    layers = [_depth(c) or encoder.backbone.config.num_hidden_layers for c in missing]

    def forward(batch):
        states = encoder.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  output_hidden_states=True).hidden_states
        return torch.cat([encoder.pool_hidden(states[n], batch["attention_mask"]) for n in layers], dim=-1), None

    settings = EncodeSettings(**{**vars(deepest.settings), "max_length": max_length})
    names = "+".join(c.config.base_model.rstrip("/").split("/")[-1] for c in missing)
    with torch.inference_mode():
        pooled = encode(encoder, tokenizer, texts, settings, desc=f"{desc} ({names}, one pass)", forward=forward)
    for cache, part in zip(missing, np.split(pooled, len(missing), axis=1)):
        cache.put(cache.path(texts, max_length), np.ascontiguousarray(part))
