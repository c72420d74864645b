"""The records a study leaves, and the names everything else reads them by.

One results file per trial: ``<study>/runs/<trial id>/results.json``, written by
:func:`sbmoe_ray.train.fit` (config, training path, per-epoch history, best checkpoint and its metrics,
test results with per-query scores) with the trial's id, its sampled parameters and the name of the
study's objective. :class:`TrialRecord` reads it back; the report, the MLflow tracker, the CLI and the
study scripts all read trials through it, name metrics with :func:`metric_key` and find a trial's
paired baseline with :func:`baselines`. Nothing here imports Ray, torch or MLflow.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUNS_DIR = "runs"
RESULTS_FILE = "results.json"


def mlflow_name(key: str) -> str:
    """MLflow-friendly metric names (no ``@``): ``ndcg@10`` -> ``ndcg_at_10``."""
    return key.replace("@", "_at_")


def metric_key(dataset: str, metric: str) -> str:
    """Per-dataset metric names: ``scifact.ndcg_at_10``."""
    return f"{dataset}.{mlflow_name(metric)}"


def final_metrics(test: list[dict[str, Any]]) -> dict[str, float]:
    """Every test metric of a trial by its per-dataset name."""
    return {metric_key(r["dataset"], m): v for r in test for m, v in r["metrics"].items()}


@dataclass
class TrialRecord:
    trial_id: str
    params: dict[str, Any]
    objective_metric: str
    best_metrics: dict[str, Any]
    test: list[dict[str, Any]]          # EvaluationResult.to_dict() per dataset, with per-query scores
    history: list[dict[str, Any]]
    path: str                           # the training path (zero_shot, cached_head, live, cached_gradient)
    file: str | None = None             # the results file it was read from

    @classmethod
    def read(cls, file: Path) -> TrialRecord | None:
        """The record in a trial's results file; None for a run that is not a study's trial."""
        data = json.loads(Path(file).read_text())
        if "trial_id" not in data:
            return None
        return cls(data["trial_id"], data["params"], data["objective_metric"], data["best_metrics"], data["test"],
                   data["history"], data["path"], str(file))

    @property
    def objective(self) -> float:
        """The study's objective (a validation metric of the best checkpoint); NaN when nothing trained."""
        return float(self.best_metrics.get(self.objective_metric, math.nan))

    @property
    def is_baseline(self) -> bool:
        return self.params["num_experts"] == 0

    @property
    def base_model(self) -> str:
        return self.params["base_model"]

    def mean(self, dataset: str, metric: str = "ndcg@10") -> float:
        return next(r["metrics"][metric] for r in self.test if r["dataset"] == dataset)

    def per_query(self, dataset: str, metric: str = "ndcg@10") -> dict[str, float]:
        return next(r["per_query"][metric] for r in self.test if r["dataset"] == dataset)


def load_trials(study_dir: Path) -> list[TrialRecord]:
    """Every finished trial of a study, ordered by trial id."""
    records = [TrialRecord.read(p) for p in sorted((Path(study_dir) / RUNS_DIR).glob(f"*/{RESULTS_FILE}"))]
    return [r for r in records if r is not None]


def baselines(records: list[TrialRecord]) -> dict[str, TrialRecord]:
    """Each base model's baseline trial (``num_experts = 0``), by base model."""
    return {r.base_model: r for r in records if r.is_baseline}


def best_trial(records: list[TrialRecord], mode: str) -> TrialRecord | None:
    """The SB-MoE trial with the best objective (a validation metric, never a test metric)."""
    moe = [r for r in records if not r.is_baseline and not math.isnan(r.objective)]
    if not moe:
        return None
    return min(moe, key=lambda r: r.objective) if mode == "min" else max(moe, key=lambda r: r.objective)


def format_table(rows: list[dict[str, object]], columns: list[str]) -> str:
    """A plain-text table; floats with 4 decimals."""
    cells = [[f"{r.get(c, ''):.4f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns]
             for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
