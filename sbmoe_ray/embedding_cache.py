"""Content-addressed cache of a frozen encoder's pooled embeddings: the fast path of a study.

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
from pathlib import Path
from typing import Sequence

import numpy as np

from sbmoe_ray.backbones import load_tokenizer, resolve_model
from sbmoe_ray.evaluate import EncodeSettings, encode
from sbmoe_ray.model import BiEncoder, ModelConfig, build_bi_encoder

_MODEL_FILES = ("*.json", "*.safetensors", "*.bin", "*.txt")


def model_identity(base_model: str) -> str:
    """A hash of the model's files when it is a local folder, else its hub id (and the layer cut)."""
    spec = resolve_model(base_model)
    digest = hashlib.sha256(f"{spec.num_layers}".encode())
    folder = Path(spec.source)
    if folder.is_dir():
        for path in sorted(p for pattern in _MODEL_FILES for p in folder.glob(pattern)):
            digest.update(path.name.encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
    else:
        digest.update(spec.source.encode())
    return digest.hexdigest()


class PooledEmbeddingCache:
    """Pooled (pre-head) embeddings of a frozen base encoder, computed on first use and kept on disk."""

    def __init__(self, root: Path, config: ModelConfig, settings: EncodeSettings) -> None:
        self.root, self.config, self.settings = Path(root), config, settings
        self._model_id = model_identity(config.base_model)
        self._encoder: BiEncoder | None = None
        self._tokenizer = None

    def key(self, texts: Sequence[str], max_length: int) -> str:
        digest = hashlib.sha256()
        for part in (self._model_id, self.config.pooling, str(max_length), self.settings.precision):
            digest.update(f"{part}\x00".encode())
        for text in texts:
            digest.update(text.encode())
            digest.update(b"\x00")
        return digest.hexdigest()

    def path(self, texts: Sequence[str], max_length: int) -> Path:
        key = self.key(texts, max_length)
        return self.root / key[:2] / f"{key}.npy"

    def get(self, texts: Sequence[str], max_length: int, desc: str = "encode") -> np.ndarray:
        path = self.path(texts, max_length)
        if path.is_file():
            return np.load(path)
        if self._encoder is None:
            self._encoder = build_bi_encoder(ModelConfig(**{**vars(self.config), "num_experts": 0}),
                                             frozen_encoder=True).to(self.settings.device)
            self._tokenizer = load_tokenizer(self.config.base_model)
        encoder = self._encoder
        settings = EncodeSettings(**{**vars(self.settings), "max_length": max_length})
        pooled = encode(encoder, self._tokenizer, texts, settings, desc=f"{desc} (cache)",
                        forward=lambda batch: (encoder.pool(batch["input_ids"], batch["attention_mask"]), None))
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy.tmp", delete=False) as tmp:
            np.save(tmp, pooled)
        os.replace(tmp.name, path)
        return pooled


def dataset_embeddings(cache: PooledEmbeddingCache, dataset, query_max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Pooled embeddings of a dataset's corpus and queries (in their order), from the cache or encoded now."""
    docs = cache.get([d.full_text for d in dataset.corpus.values()], cache.config.max_length, f"{dataset.name} corpus")
    queries = cache.get(list(dataset.queries.values()), query_max_length, f"{dataset.name} queries")
    return docs, queries
