"""Where a worker runs: a Ray Train worker, or this process; its checkpoints and its progress log.

A session gives the loop its rank, world size and device, the checkpoint to resume from, the wrapping of
the model (DDP on Ray Train with several workers) and the reporting of an epoch with its checkpoint. The
driver picks one (:mod:`sbmoe_ray.train.launch`): Ray Train's workers report to Train's controller; a run
that trains in this process (:attr:`TrainConfig.in_process`) keeps its best and latest checkpoints in
its run folder. A checkpoint holds model, optimizer, scheduler, epoch and RNG states, so a resumed run
replays exactly what the interrupted one would have done.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sbmoe_ray.model.bi_encoder import BiEncoder, load_weights, save_model
from sbmoe_ray.runtime.precision import device_for
from sbmoe_ray.train.config import CHECKPOINT_METRICS, TrainConfig

TRAIN_STATE_FILE = "train_state.pt"
PROGRESS_FILE = "progress.jsonl"


def save_checkpoint(folder: Path, model: BiEncoder, cfg: TrainConfig, optimizer, scheduler, epoch: int,
                    stopper=None) -> None:
    save_model(model, cfg.model, folder)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
                "stopping": stopper.state_dict() if stopper is not None else None,
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}},
               folder / TRAIN_STATE_FILE)


def restore_checkpoint(folder: Path, model: BiEncoder, optimizer, scheduler, stopper=None) -> int:
    """Load weights, optimizer, scheduler, early-stopping and RNG state; return the epoch to start from."""
    state = torch.load(folder / TRAIN_STATE_FILE, map_location="cpu", weights_only=False)
    load_weights(model, folder)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    if stopper is not None:
        stopper.load_state_dict(state.get("stopping"))
    return state["epoch"] + 1


def log_progress(run_dir: Path, event: str, **values: Any) -> None:
    """Append one JSON line to ``<run_dir>/progress.jsonl`` (epoch starts, and ends with their metrics)."""
    import ray

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / PROGRESS_FILE, "a") as f:
        f.write(json.dumps({"event": event, "time": time.time(), "pid": os.getpid(), "node_id": node, **values}) + "\n")


def read_progress(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / PROGRESS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def epoch_history(run_dir: Path) -> list[dict[str, Any]]:
    """Metrics per epoch; an epoch that ran again after a failure counts once (its last run)."""
    ends = {e["epoch"]: e["metrics"] for e in read_progress(run_dir) if e["event"] == "epoch_end"}
    return [ends[epoch] for epoch in sorted(ends)]


class RayTrainSession:
    """What a Ray Train worker needs from Train: its rank, device, checkpoint to resume from, and reporting."""

    checkpoints = None              # Train keeps them: a worker cannot reload its best one after the last epoch

    def __init__(self, cfg: TrainConfig) -> None:
        import ray.train
        import ray.train.torch
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()     # the load report lists the pooler weights we leave out on purpose
        torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()

    def resume(self, model: BiEncoder, optimizer, scheduler, stopper=None) -> int:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if not checkpoint:
            return 0
        with checkpoint.as_directory() as folder:
            return restore_checkpoint(Path(folder), model, optimizer, scheduler, stopper)

    def wrap(self, model: BiEncoder) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)   # DDP when world > 1

    def checkpoint_folder(self, epoch: int):
        """Where rank 0 writes an epoch's checkpoint: a temporary folder that Ray Train persists on report."""
        return tempfile.TemporaryDirectory()

    def report(self, metrics: dict[str, Any], folder: Path | None) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None)


class LocalCheckpoints:
    """An in-process run's checkpoints in its run folder (``checkpoint_epoch_NNNN``): the best and the latest."""

    METRICS_FILE = "metrics.json"

    def __init__(self, cfg: TrainConfig) -> None:
        self.root, self.metric = cfg.run_dir, cfg.run.checkpoint_metric
        self.mode = CHECKPOINT_METRICS[self.metric]

    def all(self) -> list[tuple[Path, dict[str, Any]]]:
        folders = sorted(self.root.glob("checkpoint_epoch_*"))
        return [(f, json.loads((f / self.METRICS_FILE).read_text())) for f in folders
                if (f / self.METRICS_FILE).is_file()]

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        return (self.all() or [None])[-1]

    def best(self) -> tuple[Path, dict[str, Any]]:
        sign = 1 if self.mode == "min" else -1      # an epoch without the metric ranks last
        return min(self.all(), key=lambda item: (self.metric not in item[1], sign * item[1].get(self.metric, 0.0)))

    def staging(self, epoch: int) -> Path:
        """An empty folder in the run folder for an epoch's checkpoint, written there once and renamed by
        :meth:`add` (a killed run leaves only a ``.partial`` folder, never a half checkpoint)."""
        staging = self.root / f".checkpoint_epoch_{epoch:04d}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging

    def add(self, folder: Path, metrics: dict[str, Any]) -> None:
        """Take in a checkpoint (renamed from its staging folder, copied from anywhere else), then drop all but
        best and latest."""
        target = self.root / f"checkpoint_epoch_{metrics['epoch']:04d}"
        staging = self.root / f".{target.name}.partial"
        if Path(folder) != staging:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(folder, staging)
        (staging / self.METRICS_FILE).write_text(json.dumps(metrics, default=str))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        keep = {self.best()[0], target}
        for old, _ in self.all():
            if old not in keep:
                shutil.rmtree(old)

    def annotate(self, folder: Path, values: dict[str, Any]) -> None:
        """Add ``values`` to a kept checkpoint's metrics (a number computed for it after the last epoch)."""
        path = folder / self.METRICS_FILE
        tmp = path.with_name(f".{path.name}.partial")
        tmp.write_text(json.dumps({**json.loads(path.read_text()), **values}, default=str))
        tmp.replace(path)


class InProcessSession:
    """The session of a run that trains in the calling process (:attr:`TrainConfig.in_process`)."""

    rank, world = 0, 1

    def __init__(self, cfg: TrainConfig, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> None:
        torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))     # as a Ray Train worker would
        self.device = torch.device(device_for(cfg.scaling.use_gpu))
        self.checkpoints, self.on_epoch = LocalCheckpoints(cfg), on_epoch

    def resume(self, model: BiEncoder, optimizer, scheduler, stopper=None) -> int:
        latest = self.checkpoints.latest()
        return restore_checkpoint(latest[0], model, optimizer, scheduler, stopper) if latest else 0

    def wrap(self, model: BiEncoder) -> torch.nn.Module:
        return model

    @contextlib.contextmanager
    def checkpoint_folder(self, epoch: int):
        """Where the run writes an epoch's checkpoint: its final place in the run folder, under a temporary name."""
        yield self.checkpoints.staging(epoch)

    def report(self, metrics: dict[str, Any], folder: Path | None) -> None:
        self.checkpoints.add(folder, metrics)
        if self.on_epoch:
            self.on_epoch(metrics)
