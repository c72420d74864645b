"""The experts study: Ray Tune + Optuna over base model, number of experts, top-k and learning rate.

Every trial is one distributed training run (:func:`sbmoe_ray.train.fit` builds a ``TorchTrainer``
inside the Tune function trainable, Train V2 style) followed by evaluation on every test dataset. For
each base model a baseline is enqueued first (``num_experts = 0``: plain fine-tuning, or the zero-shot
model when the encoder is frozen), so every SB-MoE trial has a paired baseline.

Optuna optimises ``objective`` = the best checkpoint's validation metric (``val_loss`` or
``val_ndcg@10``), never a test metric. Per-epoch results carry the epoch's value so that Tune's strict
metric check and ASHA work; only the final report (``final = True``) is told to Optuna as COMPLETE: a
trial stopped early by ASHA is told as PRUNED, so its partial value never biases TPE.
"""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search.optuna import OptunaSearch

from sbmoe_ray.backbones import hidden_size
from sbmoe_ray.config import ConfigBase
from sbmoe_ray.data import data_root, dataset_name, load_dataset
from sbmoe_ray.errors import ConfigError
from sbmoe_ray.evaluate import EvaluationResult, evaluate_pooled
from sbmoe_ray.model import ModelConfig, build_bi_encoder
from sbmoe_ray.train import CHECKPOINT_METRICS, TrainConfig, embedding_cache, fit, prepare, resolved

SPACE_FILE, CONFIG_FILE = "study_space.json", "study_config.json"
INFERENCE_MODES = ("top_k", "all")


def default_train() -> TrainConfig:
    """The default study trains the SB-MoE head of a frozen MiniLM on cached embeddings (seconds a trial)."""
    return TrainConfig(encoder_lr=0.0, epochs=6, batch_size=64, num_workers=1, cpus_per_worker=1.0,
                       test_datasets=["scifact", "nfcorpus", "cran", "cisi"], precision="bf16")


@dataclass
class StudyConfig(ConfigBase):
    name: str = "experts-sweep"
    base_models: list[str] = field(default_factory=lambda: ["minilm", "minilm-l3"])
    num_experts: list[int] = field(default_factory=lambda: [0, 3, 6, 9, 12])   # 0 = the baseline
    top_k: int | None = None            # fixed training top-k, or None: searched in [1, min(N, top_k_max)]
    top_k_max: int = 2
    inference: list[str] = field(default_factory=lambda: list(INFERENCE_MODES))   # "top_k" and/or "all"
    moe_lr: list[float] = field(default_factory=lambda: [1e-4, 1e-2])            # log-uniform [low, high]
    num_trials: int = 24                # including the enqueued baselines
    max_concurrent: int = 1
    asha: bool = False                  # early stopping on the per-epoch objective
    asha_grace_epochs: int = 1
    objective: str = "val_loss"
    seed: int = 0
    storage_path: str = "results/studies"
    # $MLFLOW_TRACKING_URI (a cluster head exports its server's), else the embedded store
    tracking_uri: str = field(default_factory=lambda: os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    train: TrainConfig = field(default_factory=default_train)

    @property
    def study_dir(self) -> Path:
        return Path(self.storage_path).resolve() / self.name

    def resolved(self) -> StudyConfig:
        """A copy with every path absolute, taken in the driver: trials run in their own trial folder (Tune
        sets it as their working directory), where a relative path would name another place."""
        study = replace(self, storage_path=str(Path(self.storage_path).resolve()))
        uri = study.tracking_uri
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
        train = replace(study.train, data_dir=str(data_root(study.train.data_dir).resolve()),
                        cache_dir=str(study.cache_dir))
        return replace(study, train=train, tracking_uri=uri)

    @property
    def cache_dir(self) -> Path:
        """The frozen-encoder embedding cache, shared by every study under the same storage path."""
        return Path(self.train.cache_dir or Path(self.storage_path) / "embedding_cache").resolve()

    @property
    def test_names(self) -> list[str]:
        """The test datasets as results name them."""
        return [dataset_name(d) for d in self.train.test_datasets]

    @property
    def mode(self) -> str:
        return CHECKPOINT_METRICS[self.objective]

    def space(self) -> dict[str, Any]:
        """What defines the search space: a study resumed under the same name must keep it."""
        return {"base_models": self.base_models, "num_experts": self.num_experts, "top_k": self.top_k,
                "top_k_max": self.top_k_max, "inference": self.inference, "moe_lr": self.moe_lr,
                "objective": self.objective}

    def validate(self, where: str = "config") -> None:
        if not self.base_models:
            raise ConfigError(f"{where}.base_models=[]: name at least one base model")
        if not any(n > 0 for n in self.num_experts) or any(not isinstance(n, int) or n < 0 for n in self.num_experts):
            raise ConfigError(f"{where}.num_experts={self.num_experts!r}: a list of integers >= 0 (0 = the "
                              "baseline) with at least one expert count > 0")
        moe = [n for n in self.num_experts if n > 0]
        if self.top_k is not None and moe and self.top_k > min(moe):
            raise ConfigError(f"{where}.top_k={self.top_k}: larger than num_experts={min(moe)}; a fixed top_k "
                              f"must be in [1, {min(moe)}] (the smallest expert count of the study)")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"{where}.top_k={self.top_k}: must be >= 1 or null (searched)")
        if self.top_k_max < 1:
            raise ConfigError(f"{where}.top_k_max={self.top_k_max}: must be >= 1")
        bad_modes = [m for m in self.inference if m not in INFERENCE_MODES]
        if not self.inference or bad_modes:
            raise ConfigError(f"{where}.inference={self.inference!r}: allowed values are {list(INFERENCE_MODES)}")
        if (len(self.moe_lr) != 2 or any(not isinstance(v, float) or not v > 0 or math.isinf(v) for v in self.moe_lr)
                or self.moe_lr[0] > self.moe_lr[1]):
            raise ConfigError(f"{where}.moe_lr={self.moe_lr!r}: expected [low, high] with 0 < low <= high "
                              "(searched log-uniformly)")
        if self.num_trials < 1 or self.max_concurrent < 1:
            raise ConfigError(f"{where}.num_trials={self.num_trials}, max_concurrent={self.max_concurrent}: "
                              "both must be >= 1")
        if self.objective not in CHECKPOINT_METRICS or self.objective == "train_loss":
            raise ConfigError(f"{where}.objective={self.objective!r}: allowed values are ['val_loss', "
                              "'val_accuracy', 'val_ndcg@10'] (a validation metric, never a test metric)")
        n = max(self.num_experts) or 1          # the template's own num_experts is set per trial
        replace(self.train, model=replace(self.train.model, num_experts=n, top_k=1)).validate(f"{where}.train")
        if self.objective == "val_ndcg@10" and not self.train.validation_retrieval_docs:
            raise ConfigError(f"{where}.objective='val_ndcg@10': needs train.validation_retrieval_docs > 0")


# ----------------------------------------------------------------------------------------------------
# Search space (module level: Ray pickles the searcher, and with it this function)


def define_space(trial, base_models: list[str], num_experts: list[int], top_k: int | None, top_k_max: int,
                 inference: list[str], moe_lr: list[float]) -> dict[str, Any] | None:
    """Optuna define-by-run space; the top-k range depends on the sampled expert count (k <= N always).

    Baselines (N = 0) come only from the enqueued points (:func:`baselines`): ``baseline`` is a one-value
    parameter, always 0 when TPE samples it and 1 in those points, so no trial is spent on a copy of a
    baseline (a zero-shot baseline has no objective, and TPE would never learn to avoid it).
    """
    trial.suggest_categorical("base_model", base_models)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Fixed parameter baseline")    # the enqueued 1
        if trial.suggest_int("baseline", 0, 0):
            return {"num_experts": 0}
    n = trial.suggest_categorical("num_experts", [n for n in num_experts if n > 0])
    if top_k is None:
        trial.suggest_int("top_k", 1, min(n, top_k_max))
    trial.suggest_categorical("inference", inference)
    trial.suggest_float("moe_lr", moe_lr[0], moe_lr[1], log=True)
    return None


def baselines(study: StudyConfig) -> list[dict[str, Any]]:
    """One enqueued baseline trial per base model, when ``num_experts`` lists 0."""
    return [{"base_model": m, "baseline": 1} for m in study.base_models] if 0 in study.num_experts else []


def trial_config(study: StudyConfig, params: dict[str, Any], trial_id: str) -> TrainConfig:
    """The TrainConfig of one trial: the study's fixed settings plus the sampled parameters."""
    n = params["num_experts"]
    model = replace(study.train.model, base_model=params["base_model"], num_experts=n,
                    top_k=params.get("top_k", study.top_k or 1),
                    inference_top_k="all" if params.get("inference") == "all" else None)
    return replace(study.train, model=model, moe_lr=params.get("moe_lr", study.train.moe_lr), name=trial_id,
                   storage_path=str(study.study_dir / "runs"),
                   cache_dir=str(study.cache_dir))


def is_zero_shot(cfg: TrainConfig) -> bool:
    """A frozen encoder without experts has nothing to train: its baseline is the zero-shot model."""
    return cfg.frozen and cfg.model.num_experts == 0


def zero_shot(cfg: TrainConfig) -> list[EvaluationResult]:
    """Zero-shot test metrics from the embedding cache (the frozen study's baseline)."""
    cache = embedding_cache(cfg)
    model = build_bi_encoder(cfg.model, frozen_encoder=True, hidden_size=hidden_size(cfg.model.base_model))
    results = []
    for name in cfg.test_datasets:
        ds = load_dataset(name, cfg.test_split, cfg.data_dir)
        results.append(evaluate_pooled(
            model, ds, cache.get([d.full_text for d in ds.corpus.values()], cfg.model.max_length, ds.name),
            cache.get(list(ds.queries.values()), cfg.query_max_length, ds.name)))
    return results


def mlflow_name(key: str) -> str:
    """MLflow-friendly metric names (no ``@``): ``ndcg@10`` -> ``ndcg_at_10``."""
    return key.replace("@", "_at_")


def metric_key(dataset: str, metric: str) -> str:
    """Per-dataset metric names: ``scifact.ndcg_at_10``."""
    return f"{dataset}.{mlflow_name(metric)}"


def final_metrics(results: list[EvaluationResult]) -> dict[str, float]:
    return {metric_key(r.dataset, m): v for r in results for m, v in r.metrics.means.items()}


# ----------------------------------------------------------------------------------------------------
# The trial, and how it talks to Tune and Optuna


def epoch_result(metrics: dict[str, Any], objective: str) -> dict[str, Any]:
    """An epoch's metrics as Tune sees them: ``objective`` (this epoch's value) and a 1-based ``epochs_done``."""
    return {**metrics, "objective": metrics.get(objective, float("nan")), "epochs_done": metrics["epoch"] + 1,
            "final": False}


class StudyReportCallback(TuneReportCallback):
    """Forward each epoch of a Ray Train run to Tune (:func:`epoch_result`)."""

    def __init__(self, objective: str) -> None:
        super().__init__()
        self.objective = objective

    def after_report(self, run_context, metrics, checkpoint):
        super().after_report(run_context, [epoch_result(m, self.objective) for m in metrics], checkpoint)


class FinalResultOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna only final results as COMPLETE."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result is not None and not result.get("final"):
            result = None          # stopped early (ASHA): PRUNED, not COMPLETE with a partial value
        elif result is not None and math.isnan(result.get("objective", float("nan"))):
            result = None          # zero-shot baseline: nothing trained, nothing to tell TPE
        super().on_trial_complete(trial_id, result, error)


def run_trial(params: dict[str, Any], study: dict[str, Any]) -> None:
    """The Tune function trainable: one training run (or zero-shot baseline), then the final report."""
    cfg = StudyConfig.from_dict(study)
    context = tune.get_context()
    train_cfg = trial_config(cfg, params, context.get_trial_id())
    results_file = Path(context.get_trial_dir()) / "trial_results.json"
    if is_zero_shot(train_cfg):
        train_cfg = resolved(train_cfg)
        test, best_metrics, history, epochs = zero_shot(train_cfg), {}, [], 0
        objective = float("nan")
    else:
        if train_cfg.in_process:      # the cached fast path trains here, in the trial
            fitted = fit(train_cfg, on_epoch=lambda metrics: tune.report(epoch_result(metrics, cfg.objective)))
        else:
            fitted = fit(train_cfg, callbacks=[StudyReportCallback(cfg.objective)])
        test, best_metrics, history = fitted.test, fitted.best_metrics, fitted.history
        objective, epochs = best_metrics.get(cfg.objective, float("nan")), len(history)
    results_file.write_text(json.dumps({"trial_id": context.get_trial_id(), "params": params, "objective": objective,
                                        "config": asdict(train_cfg), "history": history,
                                        "best_metrics": best_metrics, "test": [r.to_dict() for r in test]},
                                       default=str))
    tune.report({"objective": objective, "final": True, "epochs_done": epochs, **final_metrics(test),
                 "results_file": str(results_file)})


def searcher(study: StudyConfig) -> FinalResultOptunaSearch:
    """Seeded TPE (Optuna) over :func:`define_space`, each base model's baseline enqueued first."""
    space = functools.partial(define_space, base_models=study.base_models, num_experts=study.num_experts,
                              top_k=study.top_k, top_k_max=study.top_k_max, inference=study.inference,
                              moe_lr=study.moe_lr)
    return FinalResultOptunaSearch(space=space, metric="objective", mode=study.mode,
                                   points_to_evaluate=baselines(study) or None,
                                   sampler=optuna.samplers.TPESampler(seed=study.seed))


# ----------------------------------------------------------------------------------------------------
# Before Ray starts, and the Tuner


def prepare_study(study: StudyConfig, resume: bool = False) -> None:
    """Every check that can fail cheaply, then the embedding caches; nothing here starts Ray."""
    study_dir = study.study_dir
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
        probe = study_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"config.storage_path={study.storage_path!r}: not writable ({exc.strerror}); "
                          "choose a folder you can write to") from None
    space_file = study_dir / SPACE_FILE
    if space_file.is_file():
        saved = json.loads(space_file.read_text())
        if saved != json.loads(json.dumps(study.space())):
            changed = sorted(k for k in saved if saved[k] != json.loads(json.dumps(study.space())).get(k))
            raise ConfigError(f"config.name={study.name!r}: a study of that name exists in {study_dir} with a "
                              f"different search space ({', '.join(changed)} differ); pick another name, or "
                              "restore its settings to resume it")
    elif resume:
        raise ConfigError(f"--resume: no study named {study.name!r} in {study.study_dir.parent}")
    for base_model in study.base_models:
        hidden_size(base_model)                       # clear error for an unknown or unreachable model
        params = {"base_model": base_model, "num_experts": max(study.num_experts) or 1}
        prepare(trial_config(study, params, "prepare"))   # datasets, splits, and the embedding cache
    space_file.write_text(json.dumps(study.space(), indent=2))


def save_study_config(study: StudyConfig) -> None:
    (study.study_dir / CONFIG_FILE).write_text(json.dumps(asdict(study), indent=2, default=str))


def load_study(study_dir: Path) -> StudyConfig:
    """The config a study ran with (``sbmoe report``)."""
    path = Path(study_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{study_dir}: not a study folder (no {CONFIG_FILE})")
    return StudyConfig.from_dict(json.loads(path.read_text()), where=str(path))


def trainable(study: StudyConfig):
    """The trial function with its resources: a 0.25-CPU driver of Ray Train workers, or, when trials
    train in-process (cached fast path), one worker's CPUs (and GPU)."""
    study_values = json.loads(json.dumps(asdict(study), default=str))
    train = study.train
    resources = ({"CPU": train.cpus_per_worker, **({"GPU": 1} if train.use_gpu else {})} if train.in_process
                 else {"CPU": 0.25})
    return tune.with_resources(tune.with_parameters(run_trial, study=study_values), resources)


def build_tuner(study: StudyConfig, callbacks: list) -> tune.Tuner:
    """A new Tuner, or the interrupted one restored (finished trials kept, interrupted ones resumed)."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    path = study.study_dir / "tune"
    if tune.Tuner.can_restore(str(path)):
        return tune.Tuner.restore(str(path), trainable=trainable(study), resume_errored=True)
    scheduler = (ASHAScheduler(metric="objective", mode=study.mode, time_attr="epochs_done",
                               grace_period=study.asha_grace_epochs, max_t=study.train.epochs)
                 if study.asha else None)
    return tune.Tuner(
        trainable(study),
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher(study), max_concurrent=study.max_concurrent),
                                    scheduler=scheduler, num_samples=study.num_trials),
        run_config=tune.RunConfig(name="tune", storage_path=str(study.study_dir), callbacks=callbacks,
                                  failure_config=tune.FailureConfig(max_failures=1)))


# ----------------------------------------------------------------------------------------------------
# Results


@dataclass
class TrialRecord:
    trial_id: str
    params: dict[str, Any]
    objective: float
    test: list[dict[str, Any]]          # EvaluationResult.to_dict() per dataset, with per-query scores
    history: list[dict[str, Any]]

    @property
    def is_baseline(self) -> bool:
        return self.params["num_experts"] == 0

    def mean(self, dataset: str, metric: str = "ndcg@10") -> float:
        return next(r["metrics"][metric] for r in self.test if r["dataset"] == dataset)

    def per_query(self, dataset: str, metric: str = "ndcg@10") -> dict[str, float]:
        return next(r["per_query"][metric] for r in self.test if r["dataset"] == dataset)


def load_trials(study_dir: Path) -> list[TrialRecord]:
    """Every finished trial of a study, from the results file each trial writes."""
    records = []
    for path in sorted((study_dir / "tune").glob("*/trial_results.json")):
        data = json.loads(path.read_text())
        records.append(TrialRecord(data["trial_id"], data["params"], data["objective"], data["test"], data["history"]))
    return records
