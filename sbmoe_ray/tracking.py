"""MLflow tracking of a study: one parent run, one nested run per trial, kept across resumes.

All logging happens in the driver, from a Tune callback, so a single process writes the store: the
embedded ``sqlite:///mlflow.db`` is safe even with concurrent trials. (An ``mlflow server`` is what a
cluster uses, so the UI and every node see one store.) Run ids are kept in ``<study>/mlflow_runs.json``:
a restored study logs each trial into the run it already has instead of opening a second one (Ray's
stock ``MLflowLoggerCallback`` opens a new run and leaves the first RUNNING).
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

from ray import tune

from sbmoe_ray.data.beir import (data_root, dataset_files, fingerprint_files, identical_id_queries, load_dataset,
                            locate_dataset)
from sbmoe_ray.errors import ConfigError
from sbmoe_ray.analysis.comparisons import compare_groups
from sbmoe_ray.runtime.precision import explain, resolve_precision
from sbmoe_ray.analysis.records import ConfigGroup, group_key, split_replicate, trial_point
from sbmoe_ray.evaluation.metrics import final_metrics, metric_key, mlflow_name
from sbmoe_ray.study.space import BY_NAME, PARAMS, label
from sbmoe_ray.study.config import StudyConfig

RUNS_FILE = "mlflow_runs.json"
PACKAGES = ("sbmoe-ray", "torch", "transformers", "ray", "optuna", "mlflow", "faiss-cpu", "beir")


def check_tracking_uri(uri: str) -> None:
    """Fail before any trial starts when the tracking store cannot be used."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            raise ConfigError(f"config.tracking_uri={uri!r}: the MLflow server is unreachable "
                              f"({getattr(exc, 'reason', exc)}); start it (mlflow server --host 127.0.0.1 "
                              "--port 5000) or use sqlite:///mlflow.db") from None
        raise ConfigError(f"config.tracking_uri={uri!r}: /health did not answer 200")
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent
        if not folder.is_dir():
            raise ConfigError(f"config.tracking_uri={uri!r}: folder {folder} does not exist")
        return
    raise ConfigError(f"config.tracking_uri={uri!r}: use sqlite:///<file>.db or http(s)://<mlflow server> "
                      "(the ./mlruns file store is refused by MLflow 3)")


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:500]
    return out


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


class StudyTracker:
    """The study's MLflow runs, by id; safe to pickle (Tune pickles its callbacks with the experiment)."""

    def __init__(self, study: StudyConfig) -> None:
        self.tracking_uri, self.name, self.study_dir = study.tracking_uri, study.name, study.study_dir
        self.seed = study.train.run.seed          # replicate r trains with seed + r
        self._client = None
        self._trial_runs: dict[str, str] = {}
        self.stage: str | None = None             # trial runs nest under this stage's run (for_stage)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _runs(self) -> dict[str, Any]:
        path = self.study_dir / RUNS_FILE
        runs = json.loads(path.read_text()) if path.is_file() else {"parent": None, "trials": {}}
        return {"stages": {}, **runs}

    def _save_runs(self, runs: dict[str, Any]) -> None:
        (self.study_dir / RUNS_FILE).write_text(json.dumps(runs, indent=2))

    def experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(self.name)
        return experiment.experiment_id if experiment else self.client.create_experiment(self.name)

    def parent_run(self, study: StudyConfig) -> str:
        """The study's parent run: created with the space, datasets, checksums, versions and commit."""
        runs = self._runs()
        if runs["parent"]:
            self.client.update_run(runs["parent"], status="RUNNING")
            return runs["parent"]
        run = self.client.create_run(self.experiment_id(), run_name=self.name, tags={"sbmoe.kind": "study"})
        run_id = run.info.run_id
        params = _flatten(study.fingerprint())
        params.update(_flatten({"search": study.search.to_dict()}))
        params.update(_flatten({"train": json.loads(json.dumps(study.train.to_dict(), default=str))}))
        data = study.train.data
        root = data_root(data.data_dir)
        for name in [data.train_dataset, *data.test_datasets]:
            path = locate_dataset(name, root)
            split = data.train_split if name == data.train_dataset else data.test_split
            params[f"dataset.{name}.sha256"] = fingerprint_files(dataset_files(path, split))[:16]
            rule = data.identical_ids.get(Path(name).name, "auto")
            dropped = identical_id_queries(load_dataset(name, split, root), rule)
            params[f"dataset.{name}.identical_ids"] = f"{rule}: {len(dropped)} queries drop their own id"
        for package in PACKAGES:
            try:
                params[f"version.{package}"] = metadata.version(package)
            except metadata.PackageNotFoundError:
                pass
        params["git_commit"], params["python"] = _git_commit(), sys.version.split()[0]
        device = study.train.scaling.device_type
        params["precision.resolved"] = resolve_precision(study.train.memory.precision, device)
        params["precision.why"] = explain(params["precision.resolved"], device)
        self._log_params(run_id, params)
        runs["parent"] = run_id
        self._save_runs(runs)
        return run_id

    def for_stage(self, stage: str, title: str) -> StudyTracker:
        """A tracker whose trial runs nest under the stage's run (a child of the study's parent run),
        created once and set RUNNING again on a resume."""
        runs = self._runs()
        if stage in runs["stages"]:
            self.client.update_run(runs["stages"][stage], status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id(), run_name=title, tags={
                "mlflow.parentRunId": runs["parent"], "sbmoe.kind": "stage", "sbmoe.stage": stage})
            runs["stages"][stage] = run.info.run_id
            self._save_runs(runs)
        staged = copy.copy(self)
        staged._trial_runs, staged.stage = {}, stage
        return staged

    def stage_run(self) -> str | None:
        return self._runs()["stages"].get(self.stage) if self.stage else None

    def finish_stage(self, metrics: dict[str, Any] | None = None, status: str = "FINISHED") -> None:
        run = self.stage_run()
        if run:
            if metrics:
                self.log_metrics(run, metrics, step=0)
            self.client.set_terminated(run, status)

    def trial_run(self, trial_id: str, config: dict[str, Any], starting: bool = False) -> str:
        """The nested run of a trial: the one it already has (also after a resume), else a new one, named by
        what it is (``minilm N=6 k=2 all lr=1.4e-3 s1``) and tagged with its seed and configuration group."""
        if trial_id in self._trial_runs and not starting:
            return self._trial_runs[trial_id]
        runs = self._runs()
        if trial_id in runs["trials"]:
            run_id = self._trial_runs[trial_id] = runs["trials"][trial_id]
            if starting:
                self.client.update_run(run_id, status="RUNNING")
            return run_id
        params, replicate = split_replicate(config)
        seed, point = self.seed + replicate, trial_point(config)
        tags = {"mlflow.parentRunId": runs["stages"].get(self.stage) or runs["parent"], "sbmoe.kind": "trial",
                "sbmoe.trial_id": trial_id, "sbmoe.seed": str(seed), "sbmoe.group": group_key(params),
                "sbmoe.config": label(params), **({"sbmoe.stage": self.stage} if self.stage else {})}
        if "role" in point:                            # stage 2: promoted, control or baseline, and from where
            tags["sbmoe.role"] = point["role"]
            if point.get("stage1_trials"):
                tags["sbmoe.promoted_from_trial"] = point["stage1_trials"][0]
                tags["sbmoe.promoted_from"] = runs["trials"].get(point["stage1_trials"][0], "")
        run = self.client.create_run(self.experiment_id(), run_name=label(params, seed), tags=tags)
        # Every search parameter on every run ("n/a" where a baseline has none), so MLflow's compare view
        # shows the same columns for all trials.
        self._log_params(run.info.run_id, _flatten({**{q.name: "n/a" for q in PARAMS}, **params, "seed": seed}))
        runs["trials"][trial_id] = self._trial_runs[trial_id] = run.info.run_id
        self._save_runs(runs)
        return run.info.run_id

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        """Params in batches (one request each, not one per param)."""
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start: start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int) -> None:
        self.log_metric_batch(run_id, metric_entities(metrics, step))

    def log_metric_batch(self, run_id: str, batch: list) -> None:
        for start in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[start: start + 500])

    def log_trial_files(self, files: dict[str, list[Path]]) -> None:
        """Attach files (the results file, the figures the report wrote) to each trial's run, by trial id."""
        runs = self._runs()["trials"]
        for trial_id, paths in files.items():
            for path in paths:
                if trial_id in runs and Path(path).is_file():
                    self.client.log_artifact(runs[trial_id], str(path))

    def log_comparisons(self, groups: list[ConfigGroup], datasets: list[str]) -> None:
        """Δ nDCG@10 of each SB-MoE configuration against its base model's baseline (mean over seeds), its
        query and seed intervals, raw and adjusted p (:func:`sbmoe_ray.analysis.comparisons.compare_groups`), on the
        run of each of its replicates, with that replicate's own Δ."""
        runs, metrics = self._runs()["trials"], {}
        for c in compare_groups(groups, datasets):
            for trial_id, own in zip(c.trial_ids, c.delta_per_seed):
                values = metrics.setdefault(trial_id, {})
                for name, value in (("delta", c.delta), ("ci_low", c.ci_low), ("ci_high", c.ci_high),
                                    ("seed_ci_low", c.seed_ci_low), ("seed_ci_high", c.seed_ci_high),
                                    ("p_value", c.p_raw), ("p_adjusted", c.p_adjusted), ("delta_this_seed", own)):
                    values[metric_key(c.dataset, f"{name}_ndcg@10")] = value
        for trial_id, values in metrics.items():
            if trial_id in runs:
                self.log_metrics(runs[trial_id], values, step=0)

    def log_test_results(self, records: list) -> None:
        """Test metrics measured after a trial ended (stage 2's test phase), into each trial's run."""
        runs = self._runs()["trials"]
        for record in records:
            if record.trial_id in runs and record.test:
                self.log_metrics(runs[record.trial_id], final_metrics(record.test), step=0)

    def log_parent_metrics(self, metrics: dict[str, Any]) -> None:
        parent = self._runs()["parent"]
        if parent:
            self.log_metrics(parent, metrics, step=0)

    def log_report(self, report: Path) -> None:
        """Attach the study report (markdown, PNGs, summary.json) to the parent run, and the study's answer
        as its metrics: per base model and dataset, the chosen configuration's Δ, intervals and p."""
        parent = self._runs()["parent"]
        if not parent:
            return
        self.client.log_artifacts(parent, str(report.parent), artifact_path="report")
        summary, metrics = json.loads((report.parent / "summary.json").read_text()), {}
        for answer in summary["per_base_model"]:
            model = BY_NAME["base_model"].show(answer["base_model"])
            self.client.set_tag(parent, f"sbmoe.chosen.{model}", answer["chosen"]["config"])
            for dataset, c in answer["datasets"].items():
                for name in ("baseline_mean", "moe_mean", "delta", "ci_low", "ci_high", "seed_ci_low", "seed_ci_high",
                             "p_raw", "p_adjusted"):
                    metrics[f"{model}.{metric_key(dataset, name)}"] = c[name]
        self.log_metrics(parent, metrics, step=0)

    def finish(self, status: str = "FINISHED") -> None:
        runs = self._runs()
        if runs["parent"]:
            self.client.set_terminated(runs["parent"], status)


def metric_entities(metrics: dict[str, Any], step: int) -> list:
    """MLflow metrics of one report: the finite numbers, MLflow-named, at ``step``."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(mlflow_name(k), float(v), now, step) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


class MlflowStudyCallback(tune.Callback):
    """Tune callback: params, per-epoch and final metrics into each trial's nested run (files are logged at
    the end of the study, from what the report wrote: :meth:`StudyTracker.log_trial_files`).

    Epoch metrics are buffered and written in one request at most every ``flush_seconds`` and at the
    trial's end: a trial of seconds costs four requests, a long trial still shows its epochs as it goes."""

    def __init__(self, tracker: StudyTracker, flush_seconds: float = 10.0) -> None:
        self.tracker, self.flush_seconds = tracker, flush_seconds
        self._pending: dict[str, list] = {}
        self._flushed: dict[str, float] = {}
        self._logged: dict[str, set[int]] = {}      # epochs (1-based) each trial reported one by one

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.tracker.trial_run(trial.trial_id, trial.config, starting=True)
        self._flushed[trial.trial_id] = time.monotonic()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        pending = self._pending.setdefault(trial.trial_id, [])
        step = int(result.get("epochs_done", 0))
        if not result.get("final"):
            self._logged.setdefault(trial.trial_id, set()).add(step)
        elif result.get("results_file"):            # epochs that were not reported one by one
            pending += self._unreported_epochs(trial.trial_id, Path(result["results_file"]))
        pending += metric_entities(result, step=step)
        if result.get("final") or time.monotonic() - self._flushed.get(trial.trial_id, 0.0) >= self.flush_seconds:
            self._flush(trial)

    def _unreported_epochs(self, trial_id: str, results_file: Path) -> list:
        logged = self._logged.get(trial_id, set())
        history = json.loads(results_file.read_text())["history"] if results_file.is_file() else []
        return [m for row in history if row["epoch"] + 1 not in logged
                for m in metric_entities({**row, "epochs_done": row["epoch"] + 1}, step=row["epoch"] + 1)]

    def _flush(self, trial) -> None:
        batch = self._pending.pop(trial.trial_id, [])
        if batch:
            self.tracker.log_metric_batch(self.tracker.trial_run(trial.trial_id, trial.config), batch)
        self._flushed[trial.trial_id] = time.monotonic()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._flush(trial)
        self.tracker.client.set_terminated(self.tracker.trial_run(trial.trial_id, trial.config), "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._flush(trial)
        self.tracker.client.set_terminated(self.tracker.trial_run(trial.trial_id, trial.config), "FAILED")
