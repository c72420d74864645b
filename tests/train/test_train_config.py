"""Training config: YAML errors name file:line and key; bad values stop before Ray starts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import ray

from sbmoe_ray.errors import ConfigError, DataError, ModelLoadError
from sbmoe_ray.model.bi_encoder import ModelConfig
from sbmoe_ray.train import TrainConfig, fit, load_train_config
from sbmoe_ray.train.config import DataConfig, MemoryConfig, OptimConfig, RunConfig
from sbmoe_ray.train.inputs import epoch_batches
from sbmoe_ray.train.routes import build_model

from helpers import save_tiny_model, synthetic_dataset

GOOD = """\
run:
  name: run
model:
  base_model: minilm
  num_experts: 6
  top_k: 1
  inference_top_k: all
data:
  test_datasets: [scifact, nfcorpus]
optim:
  moe_lr: 1e-4
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_a_good_file_with_overrides(tmp_path):
    config = load_train_config(write(tmp_path, GOOD), ["optim.epochs=3", "model.num_experts=9"])
    assert config.optim.moe_lr == 1e-4 and config.optim.epochs == 3     # "1e-4" read as a number
    assert config.model.num_experts == 9 and config.model.inference_top_k == "all"
    assert config.data.test_datasets == ["scifact", "nfcorpus"]
    assert config.route == "live" and config.memory.precision == "auto"


@pytest.mark.parametrize("text,message", [
    (GOOD.replace("top_k: 1", "top_k: 7"), r"config\.yaml:6: config\.model\.top_k=7: must be an integer in \[1, num_experts=6\]"),
    (GOOD + "  epoch: 2\n", r"config\.yaml:12: config\.optim\.epoch=2: unknown key; allowed keys are \[.*'epochs'"),
    (GOOD.replace("num_experts: 6", "num_experts: six"), r"config\.yaml:5: config\.model\.num_experts='six': expected int"),
    (GOOD.replace("inference_top_k: all", "inference_top_k: most"),
     r"config\.yaml:7: config\.model\.inference_top_k='most': expected int or 'all' or null"),
    (GOOD + "  encoder_lr: -1\n", r"config\.yaml:12: config\.optim\.encoder_lr=-1\.0: must be a finite number >= 0"),
    (GOOD + "  batch_size: 63\n",
     r"config\.yaml:12: config\.optim\.batch_size=63: must be a multiple of scaling\.num_workers=2"),
    (GOOD + "memory:\n  precision: fp16\n",
     r"config\.yaml:13: config\.memory\.precision='fp16': allowed values are \('auto', 'fp32', 'bf16'\)"),
    (GOOD + "memory:\n  grad_cache_chunk: -8\n", r"config\.yaml:13: config\.memory\.grad_cache_chunk=-8: must be an integer >= 0"),
    (GOOD + "  encoder_lr: 0\nmemory:\n  grad_cache_chunk: 8\n", r"config\.memory\.grad_cache_chunk=8: needs a trained encoder"),
    (GOOD + "encoder_lr: 0.001\n", r"config\.yaml:12: config\.encoder_lr=0\.001: this key moved to config\.optim\.encoder_lr"),
    ("epochs: [1\n", r"config\.yaml:2: not valid YAML"),
    (GOOD + "  moe_lr: 1e-3\n", r"config\.yaml:12: config\.optim\.moe_lr: given twice, on lines 11 and 12; keep one"),
])
def test_bad_files_name_line_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config(write(tmp_path, text))


def test_override_errors_are_not_blamed_on_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^config\.model\.top_k=9: .*\(from --set or a default"):
        load_train_config(write(tmp_path, GOOD), ["model.top_k=9"])


@pytest.mark.parametrize("model,optim,memory,route", [
    (ModelConfig(num_experts=0), OptimConfig(encoder_lr=0.0), MemoryConfig(), "zero_shot"),
    (ModelConfig(num_experts=3), OptimConfig(encoder_lr=0.0), MemoryConfig(), "cached_head"),
    (ModelConfig(num_experts=3), OptimConfig(freeze_encoder=True), MemoryConfig(embedding_cache=False), "live"),
    (ModelConfig(num_experts=0), OptimConfig(), MemoryConfig(), "live"),
    (ModelConfig(num_experts=3), OptimConfig(), MemoryConfig(grad_cache_chunk=8), "cached_gradient"),
])
def test_the_config_names_its_training_route_once(model, optim, memory, route):
    config = TrainConfig(model=model, optim=optim, memory=memory)
    config.validate()
    assert config.route == route


@pytest.mark.parametrize("overrides,error,message", [
    ({"data.train_split": "dev"}, DataError, r"no split 'dev'"),
    ({"data.test_datasets": ["missing-set"]}, DataError, r"dataset 'missing-set' not found"),
    ({"optim.batch_size": 64}, ConfigError, r"batch_size=64: larger than the 38 training pairs"),
    ({"loss.name": "no-such-loss"}, ConfigError,
     r"config\.loss\.name='no-such-loss': no such loss; allowed are \['in_batch_negatives'\]"),
    ({"model.base_model": "/nonexistent/model"}, ModelLoadError, r"config\.model\.base_model=.*could not load base model"),
])
def test_bad_runs_stop_before_ray_starts(tmp_path, tokenizer, monkeypatch, overrides, error, message):
    from sbmoe_ray.data import root as data

    monkeypatch.setattr(data, "BEIR_URL", "http://127.0.0.1:9/{name}.zip")
    config = TrainConfig(model=ModelConfig(base_model=str(save_tiny_model(tmp_path / "m", tokenizer)), num_experts=2),
                         data=DataConfig(train_dataset=str(synthetic_dataset(tmp_path / "d")), test_datasets=[],
                                         data_dir=str(tmp_path / "root")),
                         optim=OptimConfig(batch_size=8), run=RunConfig(storage_path=str(tmp_path / "s")))
    for key, value in overrides.items():
        section, leaf = key.split(".")
        setattr(getattr(config, section), leaf, value)
    assert not ray.is_initialized()
    with pytest.raises(error, match=message):
        fit(config)
    assert not ray.is_initialized()


def test_worker_shards_tile_the_global_batches():
    one = epoch_batches(50, 8, rank=0, world=1, seed=3, epoch=1)
    halves = [epoch_batches(50, 8, rank=r, world=2, seed=3, epoch=1) for r in (0, 1)]
    assert len(one) == 6                                            # 50 // 8, the remainder dropped
    for step, batch in enumerate(one):
        assert list(batch) == list(halves[0][step]) + list(halves[1][step])
    assert list(one[0]) != list(epoch_batches(50, 8, 0, 1, seed=3, epoch=2)[0])


def test_attention_dropout_is_off_by_default_and_can_be_kept(tmp_path, tokenizer):
    from transformers import AutoConfig

    folder = save_tiny_model(tmp_path / "m", tokenizer)
    config = AutoConfig.from_pretrained(folder)
    config.attention_probs_dropout_prob = 0.1          # the BERT default, as all-MiniLM-L6-v2 ships it
    config.save_pretrained(folder)
    base = TrainConfig(model=ModelConfig(base_model=str(folder), num_experts=2).resolved())
    keep = replace(base, optim=replace(base.optim, attention_dropout=None))
    too_high = replace(base, optim=replace(base.optim, attention_dropout=1.5))

    def attention_dropouts(cfg: TrainConfig) -> list[float]:
        model = build_model(cfg)
        return [m.dropout.p for m in model.backbone.modules() if type(m).__name__.endswith("SelfAttention")]

    assert attention_dropouts(base) == [0.0, 0.0]                     # both layers: the fused SDPA kernel
    assert attention_dropouts(keep) == [0.1, 0.1]
    with pytest.raises(ConfigError, match=r"optim\.attention_dropout=1.5: allowed range is \[0, 1\)"):
        too_high.validate()


def test_a_legal_but_unusual_batch_is_a_warning_said_once(capsys):
    from sbmoe_ray.train.config import TrainConfig

    cfg = TrainConfig()
    cfg.optim.batch_size = 2
    cfg.scaling.num_workers = 1
    for _ in range(3):
        cfg.validate("config")
    err = capsys.readouterr().err
    assert err.count("sbmoe: warning: config.optim.batch_size=2: legal, but each query sees only 1") == 1
