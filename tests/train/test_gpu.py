"""The GPU path (nccl, ``use_gpu``) on a tiny model; skipped where no CUDA device is visible.

One GPU: a Ray Train worker on it (nccl process group), resuming on it (the optimizer state follows the
parameters to the device), the evaluation task holding it, and the in-process cached path using it.
Two ranks cannot share one GPU under nccl, so the all-gather across GPUs is covered by the CPU (gloo)
tests only, unless the machine has two GPUs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch

from sbmoe_ray.data.beir import load_dataset
from sbmoe_ray.model.bi_encoder import ModelConfig
from sbmoe_ray.train import TrainConfig, fit, read_progress
from sbmoe_ray.train.testing import evaluation_for

from helpers import save_tiny_model, synthetic_dataset, with_settings

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(address="local", num_cpus=4, num_gpus=torch.cuda.device_count(), include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("gpu")
    return {"model": save_tiny_model(root / "model", tokenizer), "data": synthetic_dataset(root / "data", 88)}


def config(assets, tmp_path, **overrides) -> TrainConfig:
    model = ModelConfig(base_model=str(assets["model"]), num_experts=3, top_k=1, max_length=32)
    base = with_settings(TrainConfig(model=model), train_dataset=str(assets["data"]),
                         test_datasets=[str(assets["data"])], epochs=2, batch_size=8, query_max_length=16,
                         encoder_lr=1e-4, moe_lr=1e-3, precision="auto", validation_fraction=0.2,
                         storage_path=str(tmp_path / "store"), num_workers=1, cpus_per_worker=1.0, use_gpu=True)
    return with_settings(base, **overrides)


def devices(run_dir) -> list[str]:
    return [e["device"] for e in read_progress(run_dir) if e["event"] == "epoch_start"]


def test_a_gpu_worker_trains_resumes_and_evaluates_on_the_gpu(assets, tmp_path):
    first = fit(config(assets, tmp_path, epochs=1))
    assert devices(first.config.run_dir) == ["cuda:0"]
    assert first.test[0].device == "cuda"                 # the evaluation task held the GPU
    # The same run with more epochs resumes from the checkpoint: AdamW's state is restored onto the GPU.
    resumed = fit(config(assets, tmp_path, epochs=3))
    starts = [e["epoch"] for e in read_progress(resumed.config.run_dir) if e["event"] == "epoch_start"]
    assert starts == [0, 1, 2]
    assert devices(resumed.config.run_dir) == ["cuda:0"] * 3
    assert resumed.config.memory.precision == "bf16"                  # auto on a GPU with bf16
    assert all(row["train_loss"] == row["train_loss"] for row in resumed.history)      # no NaN in bf16
    # The GPU evaluation agrees with the CPU one of the same checkpoint (fp32 on both).
    fp32 = with_settings(resumed.config, precision="fp32")
    dataset = load_dataset(str(assets["data"]), "test")
    on_gpu = evaluation_for(fp32)(Path(resumed.best_checkpoint), [dataset])[0]
    on_cpu = evaluation_for(with_settings(fp32, use_gpu=False))(Path(resumed.best_checkpoint), [dataset])[0]
    assert (on_gpu.device, on_cpu.device) == ("cuda", "cpu")
    assert on_gpu.metrics.means == pytest.approx(on_cpu.metrics.means, abs=1e-4)


def test_the_in_process_cached_path_uses_the_gpu(assets, tmp_path):
    result = fit(config(assets, tmp_path, encoder_lr=0.0, name="cached"))
    assert result.config.in_process
    assert devices(result.config.run_dir) == ["cuda", "cuda"]
    assert [row["epoch"] for row in result.history] == [0, 1]
