"""Fine-tuning stops on its declared criterion: patience on the validation objective (the best checkpoint is
the one tested, a resumed run that had stopped trains nothing more), the epoch cap otherwise; the learning
rate warms up, then follows its schedule to zero at the capped run's last step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sbmoe_ray.model.bi_encoder import ModelConfig, load_weights
from sbmoe_ray.model.losses import build_loss
from sbmoe_ray.train import TrainConfig, fit, read_progress
from sbmoe_ray.train.routes import ROUTES
from sbmoe_ray.train.stopping import EarlyStopping, lr_multiplier
from sbmoe_ray.train.validation import validate

from helpers import save_tiny_model, synthetic_dataset, with_settings


def test_patience_stops_after_that_many_validations_without_an_improvement_beyond_min_delta():
    stopper = EarlyStopping("val_loss", "min", patience=2, min_delta=0.01)
    losses = [1.0, 0.9, 0.895, 0.92, 0.5]          # 0.895 improves by less than min_delta
    stops = [stopper.update(epoch, {"val_loss": v}) for epoch, v in enumerate(losses[:4])]
    assert stops == [False, False, False, True] and stopper.best_epoch == 1 and stopper.best == 0.9
    maximised = EarlyStopping("val_ndcg@10", "max", patience=1)
    assert [maximised.update(e, {"val_ndcg@10": v}) for e, v in enumerate([0.3, 0.4, 0.4])] == [False, False, True]
    never = EarlyStopping("val_loss", "min", patience=None)
    assert not any(never.update(e, {"val_loss": 1.0}) for e in range(10))
    restored = EarlyStopping("val_loss", "min", patience=2, min_delta=0.01)
    restored.load_state_dict(stopper.state_dict())
    assert restored.exhausted and restored.best_epoch == 1


def test_an_improvement_within_the_validation_noise_neither_resets_patience_nor_moves_the_best():
    import math
    import random

    rng = random.Random(0)
    first = [1.0 + rng.gauss(0, 0.5) for _ in range(100)]
    noisy = [v - 0.01 + rng.gauss(0, 0.3) for v in first]                 # a mean gain of ~0.01, SE ~0.03
    real = [v - 0.3 + rng.gauss(0, 0.05) for v in first]                  # a gain of 0.3, SE ~0.005
    mean = lambda xs: sum(xs) / len(xs)                                     # noqa: E731
    stopper = EarlyStopping("val_loss", "min", patience=1, min_delta_se=1.0)
    assert not stopper.update(0, {"val_loss": mean(first)}, first)
    assert mean(noisy) < mean(first)                                       # raw: an improvement
    assert stopper.update(1, {"val_loss": mean(noisy)}, noisy)             # within 1 SE: none, patience 1 ends it
    diffs = [a - b for a, b in zip(first, noisy)]
    se = math.sqrt(sum((d - mean(diffs)) ** 2 for d in diffs) / 99 / 100)
    assert stopper.noise_se == pytest.approx(se) and stopper.threshold == pytest.approx(se)
    assert stopper.best_epoch == 0 and "SE of the paired difference" in stopper.reason()
    # the raw best moved (the checkpoint a run keeps and tests), though the rule's best did not
    assert stopper.raw_best == mean(noisy) and not stopper.sets_raw_best({"val_loss": mean(first)})
    again = EarlyStopping("val_loss", "min", patience=1, min_delta_se=1.0)
    again.load_state_dict(stopper.state_dict())                           # the best's pairs travel in checkpoints
    assert again.best_pairs == pytest.approx(first)
    assert not again.update(1, {"val_loss": mean(real)}, real) and again.best_epoch == 1
    plain = EarlyStopping("val_loss", "min", patience=1)                   # min_delta_se 0: the raw rule
    plain.update(0, {"val_loss": mean(first)}, first)
    assert not plain.update(1, {"val_loss": mean(noisy)}, noisy) and plain.best_epoch == 1


def test_a_noise_threshold_needs_a_per_pair_metric():
    from sbmoe_ray.errors import ConfigError

    with pytest.raises(ConfigError, match=r"optim.min_delta_se=1: .*val_loss or val_accuracy"):
        TrainConfig.from_dict({"optim": {"min_delta_se": 1.0}, "run": {"checkpoint_metric": "val_ndcg@10"}}).validate()
    TrainConfig.from_dict({"optim": {"min_delta_se": 1.0}, "run": {"checkpoint_metric": "val_accuracy"}}).validate()


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_the_learning_rate_warms_up_then_follows_its_schedule_to_the_last_step(schedule):
    factor = lr_multiplier(schedule, warmup=4, total=20)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(4) == 1.0
    end = factor(20)
    assert end == (1.0 if schedule == "constant" else pytest.approx(0.0, abs=1e-9))
    if schedule != "constant":
        middle = factor(12)
        assert middle == pytest.approx(0.5)                 # linear and cosine both pass 0.5 half-way
        assert factor(8) > middle > factor(16)


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("stopping")
    return {"model": save_tiny_model(root / "model", tokenizer), "data": synthetic_dataset(root / "data", 48)}


def config(assets, tmp_path, **overrides) -> TrainConfig:
    model = ModelConfig(base_model=str(assets["model"]), num_experts=3, top_k=1, max_length=32, noisy_gating=False)
    base = with_settings(TrainConfig(model=model), train_dataset=str(assets["data"]),
                         test_datasets=[str(assets["data"])], epochs=6, batch_size=8, query_max_length=16,
                         encoder_lr=0.0, moe_lr=1e-2, precision="fp32", validation_fraction=0.2,
                         storage_path=str(tmp_path / "store"), num_workers=1, name="stopping")
    return with_settings(base, **overrides)


def test_a_run_stops_on_patience_tests_its_best_checkpoint_and_a_resumed_stopped_run_trains_no_more(assets, tmp_path):
    # min_delta larger than any change: no epoch after the first improves, so patience 2 stops after epoch 3.
    stopped = fit(config(assets, tmp_path, patience=2, min_delta=10.0))
    assert [row["epoch"] for row in stopped.history] == [0, 1, 2]
    assert [row["stopped_early"] for row in stopped.history] == [0.0, 0.0, 1.0]
    assert [row["since_best"] for row in stopped.history] == [0, 1, 2]
    assert [row["steps_done"] for row in stopped.history] == [4, 8, 12]         # 38 pairs // 8 a step
    losses = [row["val_loss"] for row in stopped.history]
    best_epoch = losses.index(min(losses))
    assert stopped.best_metrics["epoch"] == best_epoch                         # the best checkpoint is tested
    assert stopped.best_checkpoint.endswith(f"checkpoint_epoch_{best_epoch:04d}")
    again = fit(config(assets, tmp_path, patience=2, min_delta=10.0))
    starts = [e["epoch"] for e in read_progress(again.config.run_dir) if e["event"] == "epoch_start"]
    assert starts == [0, 1, 2] and again.best_metrics == stopped.best_metrics
    capped = fit(config(assets, tmp_path, name="capped", epochs=4))                # no patience: the cap
    assert [row["epoch"] for row in capped.history] == [0, 1, 2, 3]


def test_a_run_logs_its_measured_threshold_and_computes_its_best_checkpoints_retrieval_view_once(assets, tmp_path):
    run = fit(config(assets, tmp_path, name="noise", epochs=4, patience=2, min_delta_se=1.0,
                     validation_retrieval_docs=8))
    rows = run.history
    assert rows[0]["val_noise_se"] == 0.0                                  # no best to compare with yet
    assert all(r["val_noise_se"] > 0 and r["val_improve_threshold"] == pytest.approx(r["val_noise_se"])
               for r in rows[1:])
    # the retrieval view is computed once, after the last epoch, for the best checkpoint (the one that is tested):
    # no epoch pays for it, and it is that checkpoint's number
    assert not any("val_ndcg@10" in r for r in rows)
    cfg, route, cpu = run.config, ROUTES[run.config.route], torch.device("cpu")
    best = route.model(cfg)
    load_weights(best, Path(run.best_checkpoint))
    again = validate(best, route.inputs(cfg, cpu), build_loss(cfg.loss.name, cfg.loss.temperature), cfg, cpu)
    assert 0.0 < run.best_metrics["val_ndcg@10"] == pytest.approx(again["val_ndcg@10"], abs=1e-6)
    assert run.best_metrics["val_loss"] == pytest.approx(again["val_loss"], abs=1e-6)
    written = (Path(run.best_checkpoint) / "metrics.json").stat().st_mtime_ns
    assert fit(cfg).best_metrics == run.best_metrics          # resumed after it stopped: found, not computed again
    assert (Path(run.best_checkpoint) / "metrics.json").stat().st_mtime_ns == written


def test_a_quiet_run_prints_no_epoch_line_and_keeps_every_epoch_in_its_record(assets, tmp_path, capsys):
    loud = fit(config(assets, tmp_path, name="loud", epochs=2))
    assert "epoch 2/2" in capsys.readouterr().out
    quiet = fit(config(assets, tmp_path, name="quiet", epochs=2, quiet=True))
    out = capsys.readouterr().out
    assert "epoch" not in out and "route" not in out
    assert [r["epoch"] for r in quiet.history] == [r["epoch"] for r in loud.history] == [0, 1]
