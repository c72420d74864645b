"""What stage 2 costs here: a real training step and encoding are timed on a tiny model, and a trial's estimate
follows the module's formula from them."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from sbmoe_ray.data.beir import load_dataset
from sbmoe_ray.stages.costs import (
    IN_PROCESS_TRIAL_S,
    TRAIN_OVERHEAD,
    TRIAL_OVERHEAD_S,
    ModelCosts,
    estimate_model,
    measure_model,
)
from sbmoe_ray.train.config import TrainConfig
from sbmoe_ray.train.inputs import split_pairs
from sbmoe_ray.train.launch import resolved

from helpers import save_tiny_model, synthetic_dataset


@pytest.fixture(scope="module")
def cfg(tmp_path_factory, tokenizer) -> TrainConfig:
    root = tmp_path_factory.mktemp("costs")
    return resolved(TrainConfig.from_dict({
        "model": {"base_model": str(save_tiny_model(root / "model", tokenizer)), "max_length": 32},
        "data": {"train_dataset": str(synthetic_dataset(root / "data", 88)), "test_datasets": [],
                 "validation_fraction": 0.2, "validation_retrieval_docs": 10},
        "optim": {"batch_size": 8, "epochs": 2, "encoder_lr": 1e-4}, "memory": {"precision": "fp32"},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1.0}, "run": {"storage_path": str(root / "runs")}}))


def test_a_training_step_and_encoding_are_measured(cfg):
    costs = measure_model(cfg, threads=1, eval_threads=2)
    assert costs.step_s > 0 and costs.tokens_per_s > 0 and costs.eval_tokens_per_s > 0 and costs.eval_threads == 2


def test_a_trials_estimate_follows_the_formula(cfg):
    estimate = estimate_model(cfg, ModelCosts(step_s=1.0, tokens_per_s=320.0, eval_tokens_per_s=1000.0), 5000, cores=2)
    train, validation = split_pairs(cfg, load_dataset(cfg.data.train_dataset, "train", cfg.data.data_dir))
    steps, val_batches = len(train) // 8, math.ceil(len(validation) / 8)
    val_docs = (len({d for _, d in validation}) + 10) * 32
    train_s = 2 * (steps * 1.0 + val_batches * 1.0 / 3 + val_docs / 320.0)
    assert estimate.trial_s == pytest.approx(TRIAL_OVERHEAD_S + TRAIN_OVERHEAD * train_s)
    assert estimate.test_s > 5000 / 1000.0
    # in its trial's process the run encodes the retrieval view's documents once, for its best checkpoint
    alone = replace(cfg, scaling=replace(cfg.scaling, num_workers=1))
    assert alone.in_process
    once = estimate_model(alone, ModelCosts(step_s=1.0, tokens_per_s=320.0, eval_tokens_per_s=1000.0), 5000, cores=2)
    positives = len({d for _, d in validation}) * 32
    train_s = 2 * (steps * 1.0 + val_batches * 1.0 / 3) + (3 * positives + 10 * 32) / 320.0
    assert once.trial_s == pytest.approx(IN_PROCESS_TRIAL_S + train_s)


def test_at_depth_1_the_step_and_the_encoding_of_the_top_layer_are_measured_and_the_cache_build_too(cfg):
    from dataclasses import replace

    shallow = replace(cfg, optim=replace(cfg.optim, trained_layers=1))
    costs = measure_model(shallow, threads=1, eval_threads=1)
    assert costs.step_s > 0 and costs.tokens_per_s > 0 and math.isfinite(costs.cache_tokens_per_s)
    assert math.isnan(measure_model(cfg, threads=1, eval_threads=1).cache_tokens_per_s)   # every layer: no cache
