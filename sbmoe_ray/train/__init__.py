"""Distributed SB-MoE fine-tuning: a plain PyTorch loop inside Ray Train's ``TorchTrainer``.

Read in this order: :mod:`.config` (every setting, in sections, and the training route),
:mod:`.inputs` (what a worker sees), :mod:`.step` (one step: objective, whole-batch or cached-gradient
backward), :mod:`.routes` (what each route builds), :mod:`.loop` (one worker's epochs), :mod:`.session`
(Ray Train worker or this process; checkpoints) and :mod:`.launch` (the driver: prepare, fit).

``from sbmoe_ray.train import TrainConfig, fit`` is the public API. Names are loaded on first use, so
reading a config does not import torch or Ray.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainConfig": "config", "load_train_config": "config", "CHECKPOINT_METRICS": "config", "ROUTE_NAMES": "config",
    "fit": "launch", "prepare": "launch", "resolved": "launch", "FitResult": "launch", "RESULTS_FILE": "config",
    "read_progress": "session", "epoch_history": "session",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
