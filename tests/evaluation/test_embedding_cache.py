"""The embedding cache: a layer-prefix model (``minilm-l3`` of ``minilm``) filled from its parent's forward
pass equals encoding it on its own; entries are keyed by model, pooling, length, precision and texts."""

from __future__ import annotations

import numpy as np
import pytest

from sbmoe_ray.evaluation.dense import EncodeSettings
from sbmoe_ray.evaluation.embedding_cache import PooledEmbeddingCache, fill_family, prefix_families
from sbmoe_ray.model import backbones
from sbmoe_ray.model.backbones import BaseModelSpec
from sbmoe_ray.model.bi_encoder import ModelConfig

from helpers import save_tiny_model

TEXTS = [f"text number {i} " + "word " * (i % 7) for i in range(23)]


@pytest.fixture
def family_models(tmp_path, tokenizer, monkeypatch):
    folder = save_tiny_model(tmp_path / "tiny", tokenizer)        # 2 layers
    monkeypatch.setitem(backbones.BASE_MODELS, "tiny", BaseModelSpec(str(folder)))
    monkeypatch.setitem(backbones.BASE_MODELS, "tiny-l1", BaseModelSpec(str(folder), num_layers=1))
    return ["tiny", "tiny-l1"]


def caches(root, names) -> list[PooledEmbeddingCache]:
    settings = EncodeSettings(batch_size=4, precision="fp32", progress=False)
    return [PooledEmbeddingCache(root, ModelConfig(base_model=n, pooling="mean", max_length=16), settings) for n in names]


def test_a_prefix_model_filled_from_its_parents_pass_equals_encoding_it_alone(tmp_path, family_models):
    together = caches(tmp_path / "together", family_models)
    assert prefix_families(together) == [together]
    fill_family(together, TEXTS, 16, "texts")
    assert all(c.path(TEXTS, 16).is_file() for c in together)             # both written by one pass
    alone = caches(tmp_path / "alone", family_models)
    for shared, own in zip(together, alone):
        np.testing.assert_allclose(shared.get(TEXTS, 16), own.get(TEXTS, 16), atol=1e-6, rtol=1e-5)
    deep, shallow = (c.get(TEXTS, 16) for c in alone)
    assert np.abs(deep - shallow).max() > 1e-3                            # the two layers do differ


def test_models_that_are_not_prefixes_of_one_model_form_no_family(tmp_path, tokenizer, family_models):
    other = save_tiny_model(tmp_path / "other", tokenizer, seed=1)
    assert prefix_families(caches(tmp_path / "c", ["tiny", str(other)])) == []
    assert prefix_families(caches(tmp_path / "c", ["tiny"])) == []
