"""One trial of a stage, as Ray Tune runs it: a training run of its configuration, then its final report.

Every trial is one :func:`sbmoe_ray.train.fit` on the route its config names (the zero-shot baseline, the
head on cached embeddings in the trial's own process, or a ``TorchTrainer`` built inside the Tune function
trainable, Train V2 style) followed by evaluation on the stage's test sets. It reads its stage from a
:class:`~sbmoe_ray.study.config.StageConfig` and its configuration from a
:class:`~sbmoe_ray.study.points.TrialPoint`, and reports ``objective`` = the best checkpoint's validation
metric, never a test metric. Per-epoch results carry the epoch's value, so that Tune's strict metric check
and ASHA work; the final report has ``final = True`` (the searcher is told only that one).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from sbmoe_ray.analysis.records import group_key
from sbmoe_ray.evaluation.metrics import ZERO_SHOT_METRIC, final_metrics
from sbmoe_ray.study.layout import StageLayout
from sbmoe_ray.study.points import TrialPoint
from sbmoe_ray.study.stage import StageConfig
from sbmoe_ray.train import fit
from sbmoe_ray.train.config import RESULTS_FILE


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


def run_trial(config: dict[str, Any], stage: dict[str, Any]) -> None:
    """The Tune function trainable: one run of :func:`fit` on the trial's route, then the final report."""
    cfg = StageConfig.from_dict(stage)
    trial_id, objective, point = tune.get_context().get_trial_id(), cfg.objective, TrialPoint.of(config)
    train_cfg = cfg.trial_config(point.params, trial_id, point.replicate)
    # How epochs reach Tune, chosen once: a Ray Train run forwards each epoch as it ends; an in-process
    # run too when ASHA needs them; otherwise a trial of seconds reports once, at its end (each report is
    # a round trip to the driver), and the tracker logs its epochs from that final report.
    if not train_cfg.in_process:
        forward = dict(callbacks=[StudyReportCallback(objective)])
    elif cfg.asha:
        forward = dict(on_epoch=lambda m: tune.report(epoch_result(m, objective)))
    else:
        forward = {}
    layout = StageLayout(Path(cfg.folder))
    finished = layout.finished_file(group_key(point.params), point.replicate)
    if finished.is_file():            # trained already (before a kill): its results file answers, nothing trains
        results_file = layout.runs / finished.read_text() / RESULTS_FILE
        recorded = json.loads(results_file.read_text())
        tune.report(final_report(recorded["best_metrics"], recorded["history"], recorded["test"], results_file,
                                 objective))
        return
    fitted = fit(train_cfg, extra={"trial_id": trial_id, "params": point.params, "objective_metric": objective,
                                   "seed": train_cfg.run.seed, "replicate": point.replicate}, **forward)
    finished.parent.mkdir(parents=True, exist_ok=True)
    finished.write_text(trial_id)
    tune.report(final_report(fitted.best_metrics, fitted.history, [r.to_dict(per_query=False) for r in fitted.test],
                             fitted.config.results_file, objective))


def final_report(best: dict[str, Any], history: list[dict], test: list[dict], results_file: Path,
                 objective: str) -> dict[str, Any]:
    """A trial's last report to Tune: its best checkpoint's objective, its test metrics, its epochs."""
    return {"objective": best.get(objective, float("nan")), "zs_objective": best.get(ZERO_SHOT_METRIC, float("nan")),
            "final": True, "epochs_done": len(history), **final_metrics(test),
            # the epochs, for the MLflow callback (a trial of seconds reports only here)
            "history": json.dumps(history, default=str), "results_file": str(results_file)}


def trials_in_process(stage: StageConfig, space: dict[str, Any]) -> bool:
    """Whether the stage's SB-MoE trials train in their own process (the cached_head route, one worker)."""
    return stage.trial_config({"num_experts": max(space["num_experts"]), "top_k": 1}, "example").in_process


def trainable(stage: StageConfig, space: dict[str, Any]):
    """The trial function with its resources: a 0.25-CPU driver of Ray Train workers, or, when trials
    train in their own process (one worker), that worker's CPUs (and its share of a GPU)."""
    values = json.loads(json.dumps(asdict(stage), default=str))
    s = stage.train.scaling
    resources = ({"CPU": s.cpus_per_worker, **({"GPU": s.gpus} if s.use_gpu else {})} if trials_in_process(stage, space)
                 else {"CPU": 0.25})
    return tune.with_resources(tune.with_parameters(run_trial, stage=values), resources)
