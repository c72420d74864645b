"""sbmoe-ray: distributed hyperparameter studies of SB-MoE dense retrievers (Sokli et al. 2025, arXiv 2510.15683).

The package reads in layers (:data:`LAYERS`), each importing only from itself and the layers before it; the
architecture page of the docs is generated from that table and the modules' docstrings.

The public names below are loaded on first use, so ``import sbmoe_ray`` stays cheap and a bad config
answers before torch or Ray load.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

# The layers, in order: a module imports from its own layer and earlier ones only (tests/test_docs.py checks every
# import); each entry a subpackage or a top-level module. docs/concepts/architecture.md is generated from this.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation: errors, configs, limits", ("errors", "config", "limits")),
    ("where a run runs", ("runtime",)),
    ("data and the model", ("data", "model")),
    ("evaluation", ("evaluation",)),
    ("one training run", ("train",)),
    ("base encoders derived here", ("derive",)),
    ("what a study is", ("study",)),
    ("what a study found", ("analysis",)),
    ("MLflow", ("tracking",)),
    ("the model outside the toolkit", ("export",)),
    ("running a study", ("stages",)),
    ("the command line", ("cli",)),
)

_EXPORTS = {
    "StudyConfig": "sbmoe_ray.study.config", "StudyLayout": "sbmoe_ray.study.layout",
    "run_study": ("sbmoe_ray.stages.pipeline", "run"), "rebuild_report": "sbmoe_ray.stages.pipeline",
    "TrainConfig": "sbmoe_ray.train.config", "fit": "sbmoe_ray.train.launch",
    "ModelConfig": "sbmoe_ray.model.config", "SBMoE": "sbmoe_ray.model.moe",
    "BiEncoder": "sbmoe_ray.model.bi_encoder", "build_bi_encoder": "sbmoe_ray.model.bi_encoder",
    "load_model": "sbmoe_ray.model.bi_encoder", "load_dataset": "sbmoe_ray.data.beir",
    "evaluate": "sbmoe_ray.evaluation.dense", "EncodeSettings": "sbmoe_ray.evaluation.dense",
    "load_config": "sbmoe_ray.config", "load_trials": "sbmoe_ray.analysis.records",
    "StageSummary": "sbmoe_ray.analysis.summary",
    "ConfigError": "sbmoe_ray.errors", "DataError": "sbmoe_ray.errors", "SbmoeError": "sbmoe_ray.errors",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name] if isinstance(_EXPORTS[name], tuple) else (_EXPORTS[name], name)
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
