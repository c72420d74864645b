"""The experts study on Ray Tune + Optuna: the trial, the searcher, and the Tuner (new or restored).

Every trial is one :func:`sbmoe_ray.train.fit` (on the route its config names: the zero-shot baseline,
the head on cached embeddings in the trial's own process, or a ``TorchTrainer`` built inside the Tune
function trainable, Train V2 style) followed by evaluation on every test dataset. For each base model a
baseline is enqueued first (``num_experts = 0``: plain fine-tuning, or the zero-shot model when the
encoder is frozen), so every SB-MoE trial has a paired baseline (:mod:`sbmoe_ray.study.space`).

Optuna optimises ``objective`` = the best checkpoint's validation metric, never a test metric. Per-epoch
results carry the epoch's value so that Tune's strict metric check and ASHA work; only the final report
(``final = True``) is told to Optuna as COMPLETE: a trial stopped early by ASHA is told as PRUNED, so its
partial value never biases TPE. With ``search.seeds = n`` Tune's ``Repeater`` runs each suggested
configuration n times (replicate r trains with seed ``train.run.seed + r``) and tells Optuna the mean
objective of the n replicates; ASHA is then refused (the Repeater is not meant for early stopping).
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search import Repeater
from ray.tune.search.optuna import OptunaSearch

from sbmoe_ray.model.backbones import hidden_size
from sbmoe_ray.errors import ConfigError
from sbmoe_ray.analysis.records import split_replicate
from sbmoe_ray.evaluation.metrics import ZERO_SHOT_METRIC, final_metrics
from sbmoe_ray.study.space import define_space
from sbmoe_ray.study.config import StudyConfig
from sbmoe_ray.train import fit, prepare

FINGERPRINT_FILE, CONFIG_FILE = "study_space.json", "study_config.json"


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
        # With seeds, Tune's Repeater passes only {objective: mean over the replicates}: final by construction.
        if result is not None and result.get("final") is False:
            result = None          # stopped early (ASHA): PRUNED, not COMPLETE with a partial value
        elif result is not None and math.isnan(result.get("objective", float("nan"))):
            result = None          # zero-shot baseline: nothing trained, nothing to tell TPE
        super().on_trial_complete(trial_id, result, error)


def run_trial(config: dict[str, Any], study: dict[str, Any]) -> None:
    """The Tune function trainable: one run of :func:`fit` on the trial's path, then the final report."""
    cfg = StudyConfig.from_dict(study)
    trial_id, objective = tune.get_context().get_trial_id(), cfg.search.objective
    params, replicate = split_replicate(config)
    train_cfg = cfg.trial_config(params, trial_id, replicate)
    # How epochs reach Tune, chosen once: a Ray Train run forwards each epoch as it ends; an in-process
    # run too when ASHA needs them; otherwise a trial of seconds reports once, at its end (each report is
    # a round trip to the driver), and the tracker logs its epochs from the results file.
    if not train_cfg.in_process:
        forward = dict(callbacks=[StudyReportCallback(objective)])
    elif cfg.search.asha:
        forward = dict(on_epoch=lambda m: tune.report(epoch_result(m, objective)))
    else:
        forward = {}
    fitted = fit(train_cfg, extra={"trial_id": trial_id, "params": params, "objective_metric": objective,
                                   "seed": train_cfg.run.seed, "replicate": replicate}, **forward)
    value = fitted.best_metrics.get(objective, float("nan"))
    results_file = fitted.config.run_dir / "results.json"
    tune.report({"objective": value, "zs_objective": fitted.best_metrics.get(ZERO_SHOT_METRIC, float("nan")),
                 "final": True, "epochs_done": len(fitted.history),
                 **final_metrics([r.to_dict(per_query=False) for r in fitted.test]), "results_file": str(results_file)})


def baselines(study: StudyConfig) -> list[dict[str, Any]]:
    """One enqueued baseline trial per base model, when the space's ``num_experts`` lists 0."""
    if 0 not in study.space["num_experts"]:
        return []
    return [{"base_model": m, "baseline": 1} for m in study.space["base_model"]]


class MeanRepeater(Repeater):
    """Tune's ``Repeater`` that averages every metric of a multi-objective searcher over the replicates
    (the stock one reads a single metric name)."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, **kwargs) -> None:
        metrics = self.searcher.metric if isinstance(self.searcher.metric, list) else [self.searcher.metric]
        group = self._trial_id_to_group[trial_id]
        group.report(trial_id, [float((result or {}).get(m, np.nan)) for m in metrics])
        if group.finished_reporting():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)      # all-NaN: a zero-shot baseline
                means = np.nanmean(np.array(group.scores(), dtype=float), axis=0)
            self.searcher.on_trial_complete(group.primary_trial_id, result=dict(zip(metrics, means.tolist())),
                                            **kwargs)


def searcher(study: StudyConfig) -> FinalResultOptunaSearch:
    """Seeded TPE (Optuna) over the study's space, each base model's baseline enqueued first; two
    objectives (Optuna multi-objective TPE) with a zero-shot validation set."""
    names, modes = list(study.objectives), list(study.objectives.values())
    return FinalResultOptunaSearch(space=functools.partial(define_space, space=study.space),
                                   metric=names if len(names) > 1 else names[0],
                                   mode=modes if len(modes) > 1 else modes[0], points_to_evaluate=baselines(study) or None,
                                   sampler=optuna.samplers.TPESampler(seed=study.search.seed))


# ----------------------------------------------------------------------------------------------------
# Before Ray starts, and the Tuner


def _check_writable(study: StudyConfig) -> None:
    try:
        study.study_dir.mkdir(parents=True, exist_ok=True)
        probe = study.study_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"config.storage_path={study.storage_path!r}: not writable ({exc.strerror}); "
                          "choose a folder you can write to") from None


def prepare_study(study: StudyConfig, resume: bool = False) -> None:
    """Every check that can fail cheaply, then the embedding caches; nothing here starts Ray."""
    _check_writable(study)
    fingerprint_file = study.study_dir / FINGERPRINT_FILE
    current = json.loads(json.dumps(study.fingerprint()))
    if fingerprint_file.is_file():
        saved = json.loads(fingerprint_file.read_text())
        if saved != current:
            flat = lambda d: {**d.get("space", {}), "objective": d.get("objective")}     # noqa: E731
            changed = sorted(k for k, v in flat(current).items() if flat(saved).get(k) != v)
            raise ConfigError(f"config.name={study.name!r}: a study of that name exists in {study.study_dir} with a "
                              f"different search space ({', '.join(changed)} differ); pick another name, or "
                              "restore its settings to resume it")
    elif resume:
        raise ConfigError(f"--resume: no study named {study.name!r} in {study.study_dir.parent}")
    locate_large_collections(study)
    examples = []
    for base_model in study.space["base_model"]:
        hidden_size(base_model)                       # clear error for an unknown or unreachable model
        params = {"base_model": base_model, "num_experts": max(study.space["num_experts"]), "top_k": 1}
        examples.append(study.trial_config(params, "prepare"))
    fill_shared_caches(examples)
    for example in examples:
        prepare(example)                              # datasets, splits, and the embedding cache
    fingerprint_file.write_text(json.dumps(current, indent=2))


def locate_large_collections(study: StudyConfig) -> None:
    """The large test collections are found (downloaded when absent) before any work: an offline machine
    without them fails now, not after stage 2."""
    from sbmoe_ray.data.collections import expand_names
    from sbmoe_ray.data.beir import locate_dataset

    for name in expand_names(study.train.data.large_test_datasets):
        print(f"[prepare] large test collection {name}: {locate_dataset(name, study.train.data.data_dir)}", flush=True)


def fill_shared_caches(configs: list) -> None:
    """Base models that are layer prefixes of one another (``minilm-l3`` of ``minilm``) share one forward
    pass per text list: their cache entries are filled together before each model's own preparation."""
    from sbmoe_ray.data.beir import load_dataset
    from sbmoe_ray.evaluation.embedding_cache import fill_family, prefix_families
    from sbmoe_ray.train import resolved
    from sbmoe_ray.train.inputs import embedding_cache

    configs = [resolved(c) for c in configs if c.uses_cache]
    families = prefix_families([embedding_cache(c) for c in configs])
    if not families:
        return
    data = configs[0].data
    names = [(data.train_dataset, data.train_split)] + [(n, data.test_split) for n in data.test_datasets]
    for family in families:
        for name, split in names:
            ds = load_dataset(name, split, data.data_dir)
            fill_family(family, [d.full_text for d in ds.corpus.values()], family[0].config.max_length,
                        f"{ds.name} corpus")
            fill_family(family, list(ds.queries.values()), data.query_max_length, f"{ds.name} queries")


def save_study_config(study: StudyConfig) -> None:
    (study.study_dir / CONFIG_FILE).write_text(json.dumps(asdict(study), indent=2, default=str))


def load_study(study_dir: Path) -> StudyConfig:
    """The config a study ran with (``sbmoe report``)."""
    path = Path(study_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{study_dir}: not a study folder (no {CONFIG_FILE})")
    return StudyConfig.from_dict(json.loads(path.read_text()), where=str(path))


def trials_in_process(study: StudyConfig) -> bool:
    """Whether the study's SB-MoE trials train in their own process (the cached_head route, one worker)."""
    return study.trial_config({"num_experts": max(study.space["num_experts"]), "top_k": 1}, "example").in_process


def trainable(study: StudyConfig):
    """The trial function with its resources: a 0.25-CPU driver of Ray Train workers, or, when trials
    train in-process (the cached_head route), one worker's CPUs (and GPU)."""
    values = json.loads(json.dumps(asdict(study), default=str))
    s = study.train.scaling
    resources = ({"CPU": s.cpus_per_worker, **({"GPU": 1} if s.use_gpu else {})} if trials_in_process(study)
                 else {"CPU": 0.25})
    return tune.with_resources(tune.with_parameters(run_trial, study=values), resources)


def build_tuner(study: StudyConfig, callbacks: list) -> tune.Tuner:
    """A new Tuner, or the interrupted one restored (finished trials kept, interrupted ones resumed)."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    path, search = study.study_dir / "tune", study.search
    if tune.Tuner.can_restore(str(path)):
        return tune.Tuner.restore(str(path), trainable=trainable(study), resume_errored=True)
    scheduler = (ASHAScheduler(metric="objective", mode=study.mode, time_attr="epochs_done",
                               grace_period=search.asha_grace_epochs, max_t=study.train.optim.epochs)
                 if search.asha else None)
    # Seeds: Tune's Repeater asks the searcher once per configuration, runs it `seeds` times (each
    # replicate a trial with its index in the config) and tells the searcher the mean objective.
    algorithm = MeanRepeater(searcher(study), repeat=search.seeds) if search.seeds > 1 else searcher(study)
    return tune.Tuner(
        trainable(study),
        # In-process trials of seconds: one trial actor serves the next (no process start, imports and
        # file reads per trial); the datasets, cache entries and model hashes stay loaded in it.
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(algorithm, max_concurrent=search.max_concurrent),
                                    scheduler=scheduler, num_samples=search.num_trials * search.seeds,
                                    reuse_actors=trials_in_process(study)),
        run_config=tune.RunConfig(name="tune", storage_path=str(study.study_dir), callbacks=callbacks,
                                  failure_config=tune.FailureConfig(max_failures=1)))
