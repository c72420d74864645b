"""sbmoe-ray: distributed hyperparameter studies of SB-MoE dense retrievers (Sokli et al. 2025, arXiv 2510.15683).

The package reads in layers, each importing only those below it::

    errors, config      typed YAML configs with file:line errors
    runtime/            precision from the hardware, the machine's ceiling, Ray clusters
    data/               BEIR datasets, the paper's large collections, provenance
    model/              the SB-MoE block, the bi-encoder, base models, losses
    evaluation/         exact dense retrieval and BEIR metrics, the embedding cache, sharded evaluation
    train/              one distributed training run (Ray Train) on its route, and how it is tested
    study/              what a study is: config, search space, stages, what it leaves on disk
    analysis/           what a stage found: records, comparisons, the proxy check, the report
    tracking/           MLflow runs of a study
    stages/             running a study: the proxy search, fine-tuning, the budget, the pipeline
    cli                 the ``sbmoe`` command: study, train, evaluate, report

The public names below are loaded on first use, so ``import sbmoe_ray`` stays cheap and a bad config
answers before torch or Ray load.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_EXPORTS = {
    "StudyConfig": "sbmoe_ray.study.config", "StudyLayout": "sbmoe_ray.study.layout",
    "run_study": ("sbmoe_ray.stages.pipeline", "run"), "rebuild_report": "sbmoe_ray.stages.pipeline",
    "TrainConfig": "sbmoe_ray.train.config", "fit": "sbmoe_ray.train.launch",
    "ModelConfig": "sbmoe_ray.model.config", "SBMoE": "sbmoe_ray.model.moe",
    "BiEncoder": "sbmoe_ray.model.bi_encoder", "build_bi_encoder": "sbmoe_ray.model.bi_encoder",
    "load_model": "sbmoe_ray.model.bi_encoder", "load_dataset": "sbmoe_ray.data.beir",
    "evaluate": "sbmoe_ray.evaluation.dense", "EncodeSettings": "sbmoe_ray.evaluation.dense",
    "load_config": "sbmoe_ray.config", "load_trials": "sbmoe_ray.analysis.records",
    "ConfigError": "sbmoe_ray.errors", "DataError": "sbmoe_ray.errors", "SbmoeError": "sbmoe_ray.errors",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name] if isinstance(_EXPORTS[name], tuple) else (_EXPORTS[name], name)
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
