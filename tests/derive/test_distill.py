"""A small base trained at its size: the layer cut of a tiny teacher, distilled on the training collection's
texts, ends closer to the teacher's embeddings than the plain cut, loads as a base model, and is a cache hit
the second time; a derived name not built yet says which command builds it."""

from __future__ import annotations

import json

import pytest
import torch

from sbmoe_ray.derive.distill import RECIPE_FILE, Recipe, _embed, derive, training_texts
from sbmoe_ray.errors import ModelLoadError
from sbmoe_ray.model.backbones import load_backbone, load_tokenizer, resolve_model
from sbmoe_ray.model.bi_encoder import ModelConfig, build_bi_encoder

from helpers import save_tiny_model, synthetic_dataset


def test_a_distilled_cut_is_closer_to_its_teacher_than_the_plain_cut_and_is_cached(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("SBMOE_DERIVED_DIR", str(tmp_path / "derived"))
    teacher = save_tiny_model(tmp_path / "teacher", tokenizer)
    data = synthetic_dataset(tmp_path / "data", 48)
    recipe = Recipe(teacher=str(teacher), layers=1, dataset=str(data), epochs=4, lr=1e-3, batch_size=8)
    folder = derive(recipe)
    record = json.loads((folder / RECIPE_FILE).read_text())
    assert record["texts"] == 48 + 40 and record["mse_per_epoch"][-1] < record["mse_per_epoch"][0]
    texts = training_texts(recipe, None)[:16]
    tok = load_tokenizer(str(teacher))

    def embed(model):
        with torch.inference_mode():
            return _embed(model.eval(), tok, texts, 32, "fp32")

    config = ModelConfig(base_model=str(teacher)).resolved()
    target = embed(build_bi_encoder(config))
    cut = load_backbone(str(teacher))
    cut.encoder.layer = cut.encoder.layer[:1]
    plain = embed(build_bi_encoder(config, backbone=cut))
    distilled = embed(build_bi_encoder(ModelConfig(base_model=str(folder)).resolved()))
    assert build_bi_encoder(ModelConfig(base_model=str(folder)).resolved()).backbone.config.num_hidden_layers == 1
    assert torch.nn.functional.mse_loss(distilled, target) < torch.nn.functional.mse_loss(plain, target)
    mtime = (folder / "model.safetensors").stat().st_mtime
    assert derive(recipe) == folder and (folder / "model.safetensors").stat().st_mtime == mtime      # cached


def test_a_derived_base_model_not_built_yet_names_the_command_that_builds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SBMOE_DERIVED_DIR", str(tmp_path / "none"))
    with pytest.raises(ModelLoadError, match="sbmoe derive minilm --layers 3"):
        resolve_model("minilm-l3-distilled")
