"""The driver of a training run: check everything cheaply, train on the chosen path, test the best model.

:func:`prepare` finds every bad setting, dataset or model before anything expensive starts and fills in
what ``auto`` and ``None`` mean on this machine (precision, model defaults, absolute paths). :func:`fit`
then trains where the config says (:attr:`TrainConfig.route` and :attr:`TrainConfig.in_process`: nowhere
for ``zero_shot``, this process, or Ray Train's ``TorchTrainer`` workers), evaluates the best checkpoint on
the test datasets and writes ``<run_dir>/results.json``, the run's one results file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sbmoe_ray.data.beir import BeirDataset, load_dataset
from sbmoe_ray.data.root import data_root
from sbmoe_ray.errors import ConfigError
from sbmoe_ray.evaluation.metrics import ZERO_SHOT_METRIC
from sbmoe_ray.runtime.cluster import check_resources, check_shared_storage, cluster_address, init_ray
from sbmoe_ray.runtime.precision import explain, resolve_precision
from sbmoe_ray.train.config import CHECKPOINT_METRICS, RESULTS_FILE, TrainConfig
from sbmoe_ray.train.testing import evaluate_best


@dataclass
class FitResult:
    config: TrainConfig
    history: list[dict[str, Any]]            # one row of metrics per epoch
    best_checkpoint: str | None              # None: nothing was trained (zero_shot)
    best_metrics: dict[str, Any]
    last_checkpoint: str | None
    test: list                               # EvaluationResult per test dataset, of the best checkpoint
    extra: dict[str, Any] = field(default_factory=dict)    # e.g. a study's trial id and parameters
    seconds: dict[str, float] = field(default_factory=dict)  # wall time: prepare, train, test; start, end

    def to_dict(self) -> dict[str, Any]:
        return {**self.extra, "config": self.config.to_dict(), "route": self.config.route, "seconds": self.seconds,
                "history": self.history,
                "best_checkpoint": self.best_checkpoint, "best_metrics": self.best_metrics,
                "last_checkpoint": self.last_checkpoint, "test": [r.to_dict() for r in self.test]}


def resolved(cfg: TrainConfig) -> TrainConfig:
    """What ``auto`` and ``None`` mean here: precision for the device, model defaults from the base model's
    folder, absolute paths (workers and trials run elsewhere)."""
    memory = replace(cfg.memory, precision=resolve_precision(cfg.memory.precision, cfg.scaling.device_type),
                     cache_dir=str(cfg.cache_dir.resolve()))
    return replace(cfg, model=cfg.model.resolved(), memory=memory,
                   data=replace(cfg.data, data_dir=str(data_root(cfg.data.data_dir).resolve())),
                   run=replace(cfg.run, storage_path=str(Path(cfg.run.storage_path).resolve())))


def prepare(cfg: TrainConfig, quiet: bool = False, where: str = "config") -> tuple[TrainConfig, list[BeirDataset]]:
    """Everything that can fail cheaply, before Ray starts (:mod:`sbmoe_ray.train.checks`: config, datasets,
    loss, model files), then the cache entries of a frozen encoder. Returns the resolved config
    (:func:`resolved`) and the test sets. ``where`` names the config as the user wrote it."""
    from sbmoe_ray.train.checks import check_train_config
    from sbmoe_ray.train.inputs import embedding_cache, split_pairs

    cfg.validate(where)
    cfg = resolved(cfg)
    check_train_config(cfg, where, local=False)    # GPUs: checked by the caller, where they are visible
    train = load_dataset(cfg.data.train_dataset, cfg.data.train_split, cfg.data.data_dir)
    tests = [load_dataset(name, cfg.data.test_split, cfg.data.data_dir) for name in cfg.data.test_datasets]
    validation = zero_shot_validation(cfg)
    pairs = len(split_pairs(cfg, train)[0])
    if cfg.route != "zero_shot" and pairs < cfg.optim.batch_size:
        raise ConfigError(f"{where}.optim.batch_size={cfg.optim.batch_size}: larger than the {pairs} training "
                          f"pairs of {cfg.data.train_dataset!r} ({cfg.data.train_split})")
    if not (quiet or cfg.run.quiet):
        print(f"[{cfg.run.name}] {cfg.route} route, {explain(cfg.memory.precision, cfg.scaling.device_type)}",
              flush=True)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.uses_cache:
        from sbmoe_ray.evaluation.embedding_cache import dataset_embeddings

        cache = embedding_cache(cfg)
        for ds in [train, *tests, *validation]:
            dataset_embeddings(cache, ds, cfg.data.query_max_length)
    elif cfg.route == "cached_layers" and not cfg.evaluation.sharded:
        from sbmoe_ray.evaluation.state_cache import dataset_states
        from sbmoe_ray.train.inputs import state_cache

        cache = state_cache(cfg)
        for ds in [train, *tests, *validation]:
            dataset_states(cache, ds, cfg.data.query_max_length)
    return cfg, tests


def zero_shot_validation(cfg: TrainConfig) -> list[BeirDataset]:
    """The zero-shot validation set (``data.zero_shot_validation``), if the config names one."""
    data = cfg.data
    return [load_dataset(data.zero_shot_validation, data.zero_shot_validation_split, data.data_dir)] \
        if data.zero_shot_validation else []


def fit(cfg: TrainConfig, address: str | None = None, callbacks: list | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None, extra: dict[str, Any] | None = None) -> FitResult:
    """Train, evaluate the best checkpoint on the test datasets, write ``<run_dir>/results.json``.

    ``callbacks`` are Ray Train callbacks (a Tune trial passes one that forwards each epoch to Tune);
    ``on_epoch`` is called here with each epoch's metrics by an in-process run; ``extra`` is stored with
    the results (a study's trial id and parameters).
    """
    if not cfg.in_process and cluster_address(address):
        # A cluster: connect first, so that storage the other nodes cannot see is refused before any work.
        cfg.validate()
        init_ray(address, 0)
        check_shared_storage([Path(cfg.run.storage_path).resolve(), cfg.cache_dir.resolve()])
        s = cfg.scaling
        check_resources({f"config.scaling.cpus_per_worker={s.cpus_per_worker}, use_gpu={s.use_gpu}":
                         (s.cpus_per_worker, float(s.use_gpu))})
    clock = [time.time()]
    cfg, tests = prepare(cfg)
    clock.append(time.time())
    train = TRAINERS["zero_shot" if cfg.route == "zero_shot" else "in_process" if cfg.in_process else "ray_train"]
    best, best_metrics, last = train(cfg, address=address, callbacks=callbacks, on_epoch=on_epoch)
    clock.append(time.time())
    validation = zero_shot_validation(cfg)
    test = evaluate_best(best, cfg, tests + validation)
    if validation:             # the best checkpoint's zero-shot validation score: an objective, not a test
        best_metrics = {**best_metrics, ZERO_SHOT_METRIC: test.pop().metrics.means["ndcg@10"]}
    clock.append(time.time())
    from sbmoe_ray.train.session import epoch_history

    seconds = {"prepare": clock[1] - clock[0], "train": clock[2] - clock[1], "test": clock[3] - clock[2],
               "start": clock[0], "end": clock[3]}
    fitted = FitResult(cfg, epoch_history(cfg.run_dir), best and str(best), best_metrics, last and str(last), test,
                       extra or {}, seconds)
    tmp = cfg.run_dir / f".{RESULTS_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(fitted.to_dict(), indent=2, default=str))
    tmp.replace(cfg.results_file)
    return fitted


def train_nothing(cfg: TrainConfig, **_) -> tuple[None, dict[str, Any], None]:
    """The ``zero_shot`` path: the base model is tested as it is, and validated as every trained run is
    (its objective competes with theirs: a study can answer "no head")."""
    from sbmoe_ray.train.validation import base_model_validation

    return None, base_model_validation(cfg), None


def train_in_process(cfg: TrainConfig, on_epoch=None, **_) -> tuple[Path, dict[str, Any], Path]:
    """Train in this process (one worker on cached embeddings); checkpoints in the run folder."""
    from sbmoe_ray.train.loop import train_worker
    from sbmoe_ray.train.routes import ROUTES
    from sbmoe_ray.train.session import InProcessSession

    session = InProcessSession(cfg, on_epoch)
    train_worker(cfg, session, ROUTES[cfg.route])
    (best, best_metrics), last = session.checkpoints.best(), session.checkpoints.latest()[0]
    return best, best_metrics, last


def train_ray(cfg: TrainConfig, address: str | None = None, callbacks: list | None = None, **_
              ) -> tuple[Path, dict[str, Any], Path]:
    """Train with a ``TorchTrainer``; the best checkpoint's folder and metrics, and the last checkpoint's folder."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from sbmoe_ray.train.loop import train_loop_per_worker

    s, mode = cfg.scaling, CHECKPOINT_METRICS[cfg.run.checkpoint_metric]
    init_ray(address, s.num_workers * s.cpus_per_worker + 1, s.dashboard)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", POLL_INTERVAL_S)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg.to_dict(),
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=s.num_workers, use_gpu=s.use_gpu, placement_strategy=s.placement_strategy,
            resources_per_worker={"CPU": s.cpus_per_worker, **({"GPU": s.gpus} if s.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=cfg.run.name, storage_path=cfg.run.storage_path, callbacks=callbacks or [],
            failure_config=ray.train.FailureConfig(max_failures=s.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=cfg.run.checkpoint_metric, checkpoint_score_order=mode)))
    result = trainer.fit()
    best = result.get_best_checkpoint(cfg.run.checkpoint_metric, mode)
    best_metrics = next(m for c, m in result.best_checkpoints if c.path == best.path)
    # Storage is a local or shared file system (see resolved()), so checkpoint paths are folders here.
    return Path(best.path), best_metrics, Path(result.checkpoint.path)


# Ray Train's controller polls its workers every 2 s by default, and a run's end and each report wait for the next
# poll (``bench/ray_train_overhead.py`` measures the difference). A poll that times out is no error (a worker is
# declared dead after 10 min of missed polls), so polling more often costs a few remote calls. The user's own
# setting wins; the controller reads it from the environment of the process that builds the trainer.
POLL_INTERVAL_S = "0.25"


TRAINERS = {"zero_shot": train_nothing, "in_process": train_in_process, "ray_train": train_ray}


