"""The records a study leaves, and the groups its answers are about.

One results file per trial, ``<study>/<stage>/runs/<trial id>/results.json`` (:mod:`sbmoe_ray.study.layout`),
written by :func:`sbmoe_ray.train.fit` (config, training route, per-epoch history, best checkpoint and its
metrics, test results with per-query scores) with the trial's id, its sampled parameters, the name of the
stage's objective and its training seed. :class:`TrialRecord` is that file, read once; the stages, the
report, the MLflow tracker and the CLI read trials through it; stage 2's test phase adds test results to a
record and writes it back (:meth:`TrialRecord.write`).

A stage with n seeds runs each configuration n times with other training seeds (the validation split
stays fixed): each replicate is its own trial, and :class:`ConfigGroup` gathers the replicates of one
configuration. Answers are about groups: the configuration chosen by its mean validation objective
(:func:`best_group`; :func:`preferred_group` lets the baseline win), compared with its base model's
baseline group (:func:`baselines`). Nothing here imports Ray, torch or MLflow.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sbmoe_ray.study.layout import StageLayout

# The keys of a results file that TrialRecord holds as fields; the rest is kept as it is in ``extra``.
_FIELDS = ("trial_id", "params", "objective_metric", "best_metrics", "test", "history", "route", "seed", "config",
           "best_checkpoint", "seconds")


def group_key(params: dict[str, Any]) -> str:
    """A short stable id of a configuration: the same for all its replicates."""
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]


def nan_mean(values) -> float:
    """The mean of the finite values (NaN when there are none): a mean over replicates, some of which
    may have nothing to report."""
    values = [float(v) for v in values if not math.isnan(float(v))]
    return sum(values) / len(values) if values else math.nan


@dataclass
class TrialRecord:
    trial_id: str
    params: dict[str, Any]
    objective_metric: str
    best_metrics: dict[str, Any]
    test: list[dict[str, Any]]          # EvaluationResult.to_dict() per dataset, with per-query scores
    history: list[dict[str, Any]]
    route: str                          # the training route (zero_shot, cached_head, live, cached_gradient)
    seed: int = 0                       # the training seed (run.seed) of this replicate
    file: str | None = None             # the results file it was read from
    config: dict[str, Any] = field(default_factory=dict)      # the run's TrainConfig, as a dict
    best_checkpoint: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)   # prepare, train, test; start, end (wall clock)
    extra: dict[str, Any] = field(default_factory=dict)       # the file's other keys, written back as they were

    @classmethod
    def read(cls, file: Path) -> TrialRecord | None:
        """The record in a trial's results file; None for a run that is not a study's trial."""
        data = json.loads(Path(file).read_text())
        if "trial_id" not in data:
            return None
        return cls(data["trial_id"], data["params"], data["objective_metric"], data["best_metrics"], data["test"],
                   data["history"], data["route"], int(data.get("seed", 0)), str(file), data.get("config", {}),
                   data.get("best_checkpoint"), data.get("seconds", {}),
                   {k: v for k, v in data.items() if k not in _FIELDS})

    def write(self) -> None:
        """Write the record back to its results file, atomically (stage 2's test phase adds test results)."""
        data = {**self.extra, **{name: getattr(self, name) for name in _FIELDS}}
        tmp = Path(self.file).with_name(f".{Path(self.file).name}.{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=2, default=str))
        tmp.replace(self.file)

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

    @property
    def group(self) -> str:
        return group_key(self.params)

    def mean(self, dataset: str, metric: str = "ndcg@10") -> float:
        return next(r["metrics"][metric] for r in self.test if r["dataset"] == dataset)

    def per_query(self, dataset: str, metric: str = "ndcg@10") -> dict[str, float]:
        return next(r["per_query"][metric] for r in self.test if r["dataset"] == dataset)


def load_trials(stage: StageLayout) -> list[TrialRecord]:
    """Every finished trial of a stage, ordered by trial id, each results file read once."""
    records = [TrialRecord.read(p) for p in stage.results_files()]
    return [r for r in records if r is not None]


@dataclass
class ConfigGroup:
    """The replicates of one configuration: same parameters, other training seeds."""

    params: dict[str, Any]
    records: list[TrialRecord] = field(default_factory=list)

    @property
    def key(self) -> str:
        return group_key(self.params)

    @property
    def base_model(self) -> str:
        return self.params["base_model"]

    @property
    def is_baseline(self) -> bool:
        return self.params["num_experts"] == 0

    @property
    def arm(self) -> str | None:
        """The attribution control this configuration is (``dense_adapter``, ``random_routing``), if any:
        never a candidate for the answer, only what the answer is compared with."""
        return self.params.get("arm")

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.records]

    @property
    def objective(self) -> float:
        """The mean validation objective over the replicates (NaN when nothing trained)."""
        return nan_mean(r.objective for r in self.records)

    @property
    def tested(self) -> bool:
        """Whether every replicate has test results (stage 2 tests only what it chose, and the baselines)."""
        return all(r.test for r in self.records)

    def tested_on(self, dataset: str) -> bool:
        """Whether every replicate was tested on ``dataset`` (the controls skip the large collections)."""
        return bool(self.records) and all(any(t["dataset"] == dataset for t in r.test) for r in self.records)

    def mean(self, dataset: str, metric: str = "ndcg@10") -> float:
        """The test metric's mean over the replicates."""
        return sum(r.mean(dataset, metric) for r in self.records) / len(self.records)

    def per_query(self, dataset: str, metric: str = "ndcg@10") -> dict[str, float]:
        """Each query's metric averaged over the replicates (queries every replicate scored)."""
        runs = [r.per_query(dataset, metric) for r in self.records]
        common = set(runs[0]).intersection(*runs[1:])
        return {q: sum(run[q] for run in runs) / len(runs) for q in sorted(common)}


def group_trials(records: list[TrialRecord]) -> list[ConfigGroup]:
    """The trials gathered by configuration, in the order of their first trial; replicates by seed."""
    groups: dict[str, ConfigGroup] = {}
    for record in records:
        groups.setdefault(record.group, ConfigGroup(record.params)).records.append(record)
    for group in groups.values():
        group.records.sort(key=lambda r: r.seed)
    return list(groups.values())


def baselines(groups: list[ConfigGroup]) -> dict[str, ConfigGroup]:
    """Each base model's baseline (``num_experts = 0``, all its replicates), by base model: stage 1's
    zero-shot model, or stage 2's tested one (its baselines tuned, the chosen one: :func:`best_baseline`)."""
    found: dict[str, ConfigGroup] = {}
    for group in groups:
        if group.is_baseline:
            if group.base_model in found:
                raise ValueError(f"{group.base_model}: several baselines ({found[group.base_model].key}, {group.key}); "
                                 "choose one by validation first (best_baseline)")
            found[group.base_model] = group
    return found


def _best(groups: list[ConfigGroup], mode: str) -> ConfigGroup | None:
    ranked = [g for g in groups if not math.isnan(g.objective)]
    if not ranked:
        return None
    return min(ranked, key=lambda g: g.objective) if mode == "min" else max(ranked, key=lambda g: g.objective)


def best_group(groups: list[ConfigGroup], mode: str) -> ConfigGroup | None:
    """The SB-MoE configuration with the best mean validation objective (never a test metric)."""
    return _best([g for g in groups if not g.is_baseline and not g.arm], mode)


def best_baseline(groups: list[ConfigGroup], mode: str) -> ConfigGroup | None:
    """The plain fine-tuning configuration (of stage 2's tuned ones) with the best mean validation objective."""
    plain = [g for g in groups if g.is_baseline]
    return _best(plain, mode) or (plain[0] if len(plain) == 1 else None)


def best_overall(groups: list[ConfigGroup], mode: str) -> ConfigGroup | None:
    """The configuration with the best mean validation objective, the baseline included, no tie rule."""
    return _best([g for g in groups if not g.arm], mode)


def validation_noise(groups: list[ConfigGroup]) -> float:
    """The standard deviation of one replicate's validation objective around its configuration's mean, pooled
    over the configurations with two or more replicates (NaN where none has)."""
    squares, df = 0.0, 0
    for group in groups:
        values = [r.objective for r in group.records if not math.isnan(r.objective)]
        if len(values) >= 2 and len(set(values)) > 1:      # replicates of one run (zero-shot) measure no noise
            mean = sum(values) / len(values)
            squares, df = squares + sum((v - mean) ** 2 for v in values), df + len(values) - 1
    return math.sqrt(squares / df) if df else math.nan


def preferred_group(groups: list[ConfigGroup], mode: str) -> ConfigGroup | None:
    """The configuration validation prefers, the baseline included: the answer to "SB-MoE at all?". An SB-MoE
    configuration ahead of the best baseline by less than one standard error of the difference of their mean
    objectives (:func:`validation_noise`) is within the validation noise, and the simpler arm, plain
    fine-tuning, is preferred."""
    best, base = best_overall(groups, mode), best_baseline(groups, mode)
    if best is None or best.is_baseline or base is None:
        return best
    noise = validation_noise([g for g in groups if not g.arm])
    if math.isnan(noise):
        return best
    se = noise * math.sqrt(1 / len(best.records) + 1 / len(base.records))
    return base if abs(best.objective - base.objective) <= se else best


def format_table(rows: list[dict[str, object]], columns: list[str]) -> str:
    """A plain-text table; floats with 4 decimals."""
    cells = [[f"{r.get(c, ''):.4f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns]
             for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
