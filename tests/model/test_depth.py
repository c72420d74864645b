"""The depth ladder: the top k layers run on cached states of the layer below equal a plain forward of the same
weights; only the top k layers (and the head) train and are saved; a depth-k model is tested through the
state cache with the numbers of encoding every corpus with it; the cache is built once and shared."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sbmoe_ray.evaluation.dense import EncodeSettings, evaluate, evaluate_states
from sbmoe_ray.evaluation.state_cache import LayerStateCache, builds, embed_states
from sbmoe_ray.model import backbones
from sbmoe_ray.model.backbones import BaseModelSpec, load_tokenizer
from sbmoe_ray.model.bi_encoder import ModelConfig, build_bi_encoder, load_model, save_model
from sbmoe_ray.model.depth import HiddenStates, lower_forward, top_forward

from helpers import save_tiny_model

TEXTS = [f"text number {i} " + "word " * (i % 7) for i in range(23)]


@pytest.fixture
def tiny(tmp_path, tokenizer, monkeypatch):
    folder = save_tiny_model(tmp_path / "tiny", tokenizer)        # 2 layers, no dropout
    monkeypatch.setitem(backbones.BASE_MODELS, "tiny", BaseModelSpec(str(folder)))
    return "tiny"


def config(name: str, experts: int = 2) -> ModelConfig:
    return ModelConfig(base_model=name, num_experts=experts, top_k=1, pooling="mean", max_length=16,
                       normalize=False, noisy_gating=False)


@pytest.mark.parametrize("k", [1, 2])
def test_the_top_k_layers_on_the_layer_below_equal_a_plain_forward(tiny, tokenizer, k):
    model = build_bi_encoder(config(tiny), trained_layers=k).eval()
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        plain = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        lower = lower_forward(model.backbone, batch["input_ids"], batch["attention_mask"], k)
        top = top_forward(model.backbone, HiddenStates(lower, batch["attention_mask"]), k)
    mask = batch["attention_mask"].bool()
    np.testing.assert_allclose(top[mask].numpy(), plain[mask].numpy(), atol=1e-5)


def test_only_the_top_layers_and_the_head_train_and_are_saved(tiny, tmp_path):
    model = build_bi_encoder(config(tiny), trained_layers=1)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("backbone.encoder.layer.1.", "head.")) for n in trained)
    assert any(n.startswith("head.") for n in trained) and any(n.startswith("backbone.") for n in trained)
    with torch.no_grad():
        for p in model.backbone.encoder.layer[1].parameters():
            p.add_(0.01)
    save_model(model, config(tiny), tmp_path)
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert not any(k.startswith(("backbone.embeddings.", "backbone.encoder.layer.0.")) for k in saved)
    loaded, _ = load_model(tmp_path)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name           # the trained top layer back, the frozen part the base model's


def test_a_depth_k_model_tested_through_the_state_cache_scores_as_encoding_every_corpus(tiny, tmp_path, tiny_dataset):
    from sbmoe_ray.data.beir import load_dataset

    dataset = load_dataset(str(tiny_dataset), "test", None)
    settings = EncodeSettings(batch_size=4, max_length=16, precision="fp32", progress=False)
    model = build_bi_encoder(config(tiny), trained_layers=1).eval()
    cache = LayerStateCache(tmp_path / "cache", config(tiny), settings, 1)
    through_cache = evaluate_states(model, dataset, cache, settings, 16)
    plain = evaluate(model, load_tokenizer(tiny), dataset, settings)
    for metric, value in plain.metrics.means.items():
        assert through_cache.metrics.means[metric] == pytest.approx(value, abs=1e-6), metric
    states = cache.get(TEXTS, 16)
    direct = model.embed_inputs
    tokens = load_tokenizer(tiny)(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        expected = direct({"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]})[0].numpy()
    np.testing.assert_allclose(embed_states(model, states, settings), expected, atol=1e-4)


def test_the_state_cache_is_built_once_per_text_list_and_keyed_by_depth_and_precision(tiny, tmp_path):
    settings = EncodeSettings(batch_size=4, max_length=16, precision="fp32", progress=False)
    cache = LayerStateCache(tmp_path, config(tiny), settings, 1)
    first = np.array(cache.get(TEXTS, 16).states)
    again = LayerStateCache(tmp_path, config(tiny, experts=0), settings, 1).get(TEXTS, 16)   # another arm
    np.testing.assert_array_equal(first, again.states)
    assert len(builds(tmp_path)) == 1                                     # the second arm encoded nothing
    LayerStateCache(tmp_path, config(tiny), settings, 2).get(TEXTS, 16)   # another depth: another entry
    bf16 = EncodeSettings(batch_size=4, max_length=16, precision="bf16", progress=False)
    half = LayerStateCache(tmp_path, config(tiny), bf16, 1).get(TEXTS, 16)
    assert len(builds(tmp_path)) == 3 and half.states.dtype == np.uint16
    restored = half.batch(range(len(TEXTS))).hidden.float()
    exact = torch.from_numpy(cache.get(TEXTS, 16).batch(range(len(TEXTS))).hidden.numpy())
    assert torch.allclose(restored, exact, rtol=2e-2, atol=2e-2)          # bf16 bits of the same states


def test_stage_ones_pooled_cache_filled_by_the_state_caches_pass_equals_its_own_encoding(tiny, tmp_path):
    from sbmoe_ray.evaluation.embedding_cache import PooledEmbeddingCache

    settings = EncodeSettings(batch_size=4, max_length=16, precision="fp32", progress=False)
    fused = PooledEmbeddingCache(tmp_path / "fused", config(tiny), settings)
    LayerStateCache(tmp_path / "fused", config(tiny), settings, 1).get(TEXTS, 16, pooled=fused)
    assert fused.path(TEXTS, 16).is_file()                                  # written by the states' pass
    alone = PooledEmbeddingCache(tmp_path / "alone", config(tiny), settings).get(TEXTS, 16)
    np.testing.assert_allclose(fused.get(TEXTS, 16), alone, atol=1e-5)
