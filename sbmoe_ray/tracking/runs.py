"""A study's MLflow runs: one parent run, a run per stage under it, a run per trial under its stage.

The parent's and the stages' run ids are kept in ``<study>/mlflow_runs.json`` (read once, written when a
run is created), so a resumed study logs into the runs it already has; a trial's run is found under its
stage's run by its ``sbmoe.trial_id`` tag (one search per stage), so a restored trial keeps its run too.
Tune pickles its callbacks with the experiment: the client and the caches are not pickled, a restored
copy finds the runs again.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sbmoe_ray.analysis.records import group_key
from sbmoe_ray.analysis.routing import routing_metrics
from sbmoe_ray.evaluation.metrics import final_metrics, metric_key
from sbmoe_ray.study.points import TrialPoint
from sbmoe_ray.study.space import BY_NAME, PARAMS, label
from sbmoe_ray.tracking import system_metrics
from sbmoe_ray.tracking.store import artifact_location, flatten, metric_entities
from sbmoe_ray.tracking.views import EXPERIMENT_KIND, dataset_inputs, report_html, tags_of

if TYPE_CHECKING:
    from sbmoe_ray.analysis.agreement import ProxyCheck
    from sbmoe_ray.analysis.primary import PrimaryClaim
    from sbmoe_ray.analysis.summary import StageSummary


def when_unlocked(call, seconds: float = 30.0, wait: float = 0.25):
    """``call()``, retried for up to ``seconds`` while an SQLite store is locked by another writer (a stage's
    system-metrics thread, a trial being stopped; an immediate SQLITE_BUSY where two transactions would
    deadlock): on a signal the runs must still end KILLED, not fail the stop. (Each try may itself wait out
    MLflow's 20 s busy timeout.)"""
    from mlflow.exceptions import MlflowException

    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except MlflowException as exc:
            if "database is locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(wait)


class StudyTracker:
    def __init__(self, tracking_uri: str, experiment: str, runs_file: Path, seed: int = 0) -> None:
        self.tracking_uri, self.experiment, self.runs_file = tracking_uri, experiment, Path(runs_file)
        self.seed = seed                          # replicate r trains with seed + r
        self.system_metrics_interval = 10.0       # seconds between a stage run's system-metrics samples
        self.stage: str | None = None             # trial runs nest under this stage's run (for_stage)
        self.datasets: list[dict[str, str]] = []  # dataset inputs of every trial run (data.provenance.dataset_uses)
        self._client = self._runs = self._trials = self._monitor = None
        self._points: dict[str, dict[tuple, str]] = {}     # stage -> (group, seed) -> run id

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_runs": None, "_trials": None, "_points": {}, "_monitor": None}

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def runs(self) -> dict[str, Any]:
        """``{"parent": run id, "stages": {stage: run id}}``, read once."""
        if self._runs is None:
            self._runs = {"parent": None, "stages": {}}
            if self.runs_file.is_file():
                self._runs.update(json.loads(self.runs_file.read_text()))
        return self._runs

    def _save_runs(self) -> None:
        self.runs_file.write_text(json.dumps(self.runs, indent=2))

    def experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment:
            if experiment.tags.get("mlflow.experimentKind") != EXPERIMENT_KIND:   # made before it was tagged
                self.client.set_experiment_tag(experiment.experiment_id, "mlflow.experimentKind", EXPERIMENT_KIND)
            return experiment.experiment_id
        return self.client.create_experiment(self.experiment, artifact_location=artifact_location(self.tracking_uri),
                                             tags={"mlflow.experimentKind": EXPERIMENT_KIND})

    def start_study(self, params: dict[str, Any], datasets: list[dict[str, str]] | None = None) -> str:
        """The study's parent run: created with ``params`` (nested: flattened) and its ``datasets`` as MLflow
        dataset inputs (also on every trial run), or set RUNNING again."""
        self.datasets = datasets or []
        if self.runs["parent"]:
            self.client.update_run(self.runs["parent"], status="RUNNING")
            return self.runs["parent"]
        run_id = self.client.create_run(self.experiment_id(), run_name=self.experiment,
                                        tags=tags_of({"sbmoe.kind": "study"})).info.run_id
        self._log_params(run_id, flatten(params))
        self.client.log_inputs(run_id, dataset_inputs(self.datasets))
        self.runs["parent"] = run_id
        self._save_runs()
        return run_id

    def for_stage(self, stage: str, title: str) -> StudyTracker:
        """A tracker whose trial runs nest under the stage's run (a child of the parent run), created once
        and set RUNNING again on a resume; the run records every node's system metrics until the stage ends."""
        if stage in self.runs["stages"]:
            self.client.update_run(self.runs["stages"][stage], status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id(), run_name=title, tags=tags_of({
                "mlflow.parentRunId": self.runs["parent"], "sbmoe.kind": "stage", "sbmoe.stage": stage}))
            self.runs["stages"][stage] = run.info.run_id
            self._save_runs()
        staged = copy.copy(self)
        staged.stage, staged._trials, staged._points = stage, None, {}
        staged._monitor = system_metrics.start(self.runs["stages"][stage], self.tracking_uri,
                                               self.system_metrics_interval)
        return staged

    def trial_runs(self, stage: str | None = None) -> dict[str, str]:
        """Trial id -> run id of a stage's trials (this tracker's stage by default), found once by a search."""
        stage = stage or self.stage
        if self._trials is None:
            self._trials = {}
        if stage not in self._trials:
            self._trials[stage] = self._children(self.runs["stages"].get(stage), self._points.setdefault(stage, {}))
        return self._trials[stage]

    def all_trial_runs(self) -> dict[str, str]:
        """Trial id -> run id over every stage (stage 2's results include its confirmation's trials)."""
        return {k: v for stage in self.runs["stages"] for k, v in self.trial_runs(stage).items()}

    def _children(self, run_id: str | None, points: dict[tuple, str]) -> dict[str, str]:
        """Trial id -> run id of a stage run's trial runs, and ``(group, seed)`` -> run id of the same runs
        (into ``points``: a restored Tuner can give a finished configuration x seed a new
        trial id, which then reports into the run that configuration x seed already has)."""
        found, token = {}, None
        while run_id:
            page = self.client.search_runs([self.experiment_id()], f"tags.mlflow.parentRunId = '{run_id}'",
                                           max_results=1000, page_token=token)
            for r in page:
                if "sbmoe.trial_id" in r.data.tags:
                    found[r.data.tags["sbmoe.trial_id"]] = r.info.run_id
                    points[(r.data.tags.get("sbmoe.group"), r.data.tags.get("sbmoe.seed"))] = r.info.run_id
            token = page.token
            if not token:
                break
        return found

    def trial_run(self, trial_id: str, point: TrialPoint, starting: bool = False) -> str:
        """The nested run of a trial: the one it already has (also after a resume), else a new one, named by
        what it is (``minilm N=6 k=2 all lr=1.4e-3 s1``) and tagged with its seed and configuration group."""
        runs, seed = self.trial_runs(), self.seed + point.replicate
        points, key = self._points.setdefault(self.stage, {}), (group_key(point.params), str(seed))
        if trial_id not in runs and key in points:
            runs[trial_id] = points[key]
        if trial_id in runs:
            if starting:
                self.client.update_run(runs[trial_id], status="RUNNING")
            return runs[trial_id]
        tags = {"mlflow.parentRunId": self.runs["stages"].get(self.stage) or self.runs["parent"],
                "sbmoe.kind": "trial", "sbmoe.trial_id": trial_id, "sbmoe.seed": str(seed),
                "sbmoe.group": group_key(point.params), "sbmoe.config": label(point.params),
                **({"sbmoe.stage": self.stage} if self.stage else {})}
        if point.role:                                 # stage 2: promoted, control or baseline, and from where
            tags["sbmoe.role"] = point.role
            if point.stage1_trials:
                tags["sbmoe.promoted_from_trial"] = point.stage1_trials[0]
                tags["sbmoe.promoted_from"] = self.trial_runs("proxy").get(point.stage1_trials[0], "")
        run_id = self.client.create_run(self.experiment_id(), run_name=label(point.params, seed),
                                        tags=tags_of(tags)).info.run_id
        self.client.log_inputs(run_id, dataset_inputs(self.datasets))
        # Every search parameter on every run ("n/a" where a baseline has none), so MLflow's compare view
        # shows the same columns for all trials.
        self._log_params(run_id, flatten({**{q.name: "n/a" for q in PARAMS}, **point.params, "seed": seed}))
        runs[trial_id] = points[key] = run_id
        return run_id

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        """Params in batches (one request each, not one per param)."""
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start: start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
        self.log_metric_batch(run_id, metric_entities(metrics, step))

    def log_summary(self, run_id: str, metrics: dict[str, Any]) -> None:
        """A summary (a stage's statistics, the study's answer): a metric the run already holds with this
        value is not logged again, so a resumed study that repeats a summary leaves the record as it was."""
        held = self.client.get_run(run_id).data.metrics
        self.log_metric_batch(run_id, [m for m in metric_entities(metrics, 0) if held.get(m.key) != m.value])

    def log_metric_batch(self, run_id: str, batch: list) -> None:
        for start in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[start: start + 500])

    def log_stage_result(self, result) -> None:
        """A stage's result on its trials' runs (:class:`sbmoe_ray.analysis.result.StageResult`): each tested
        trial's test metrics, and on each replicate of a compared configuration its Δ nDCG@10, intervals,
        raw and adjusted p (the configuration's) and its own Δ."""
        runs, metrics = self.all_trial_runs(), {}
        for record in [*result.records, *getattr(result, "confirmed", [])]:
            if record.test:
                metrics[record.trial_id] = final_metrics(record.test)
        for c in result.comparisons:
            for trial_id, own in zip(c.trial_ids, c.delta_per_seed):
                values = metrics.setdefault(trial_id, {})
                for name, value in (("delta", c.delta), ("ci_low", c.ci_low), ("ci_high", c.ci_high),
                                    ("query_ci_low", c.query_ci_low), ("query_ci_high", c.query_ci_high),
                                    ("p_value", c.p_raw), ("p_adjusted", c.p_adjusted), ("tost_p", c.tost_p_adjusted),
                                    ("mde", c.mde), ("delta_this_seed", own)):
                    values[metric_key(c.dataset, f"{name}_ndcg@10")] = value
        for trial_id, values in metrics.items():
            if trial_id in runs:
                self.log_summary(runs[trial_id], values)

    def log_trial_files(self, files: dict[str, list[Path]]) -> None:
        """Attach files (the results file, the figures the report wrote) to each trial's run, by trial id."""
        runs = self.trial_runs()
        for trial_id, paths in files.items():
            for path in paths:
                if trial_id in runs and Path(path).is_file():
                    self.client.log_artifact(runs[trial_id], str(path))

    def log_answer(self, summary: StageSummary, agreement: dict[str, ProxyCheck] | None = None,
                   primary: list[PrimaryClaim] | None = None) -> None:
        """The study's answer on the parent run: the primary claim per base model (``primary``, else
        ``summary``'s: its verdict a tag, its Δ, interval, adjusted p, TOST p, MDE and simulated size metrics),
        per base model and dataset the chosen configuration (tag), its Δ, intervals and p (stage 1's
        ``summary``), and stage 2's rank check (τ, ρ)."""
        parent, metrics, short = self.runs["parent"], {}, BY_NAME["base_model"].show
        for claim in summary.primary if primary is None else primary:
            model = short(claim.base_model)
            self.client.set_tag(parent, f"sbmoe.primary.{model}.verdict", claim.verdict)
            metrics.update({f"primary.{model}.{k}": getattr(claim, k) for k in (
                "delta", "low", "high", "p_adjusted", "tost_p_adjusted", "mde", "tau2")})
            if claim.size:
                metrics[f"primary.{model}.simulated_size"] = claim.size["rate"]
        for answer in summary.per_base_model:
            model = short(answer.base_model)
            self.client.set_tag(parent, f"sbmoe.chosen.{model}", answer.chosen.config)
            self.client.set_tag(parent, f"sbmoe.preferred.{model}", answer.preferred)
            for dataset, c in answer.datasets.items():
                self.client.set_tag(parent, f"sbmoe.{model}.{metric_key(dataset, 'verdict')}", c.verdict)
                for name in ("baseline_mean", "moe_mean", "delta", "ci_low", "ci_high", "query_ci_low",
                             "query_ci_high", "p_raw", "p_adjusted", "tost_p_adjusted", "mde"):
                    metrics[f"{model}.{metric_key(dataset, name)}"] = getattr(c, name)
        if summary.aa_check:
            metrics.update({f"aa_check.{k}": summary.aa_check[k] for k in ("combined_rate", "query_only_rate")})
        metrics.update(routing_metrics(summary.routing, short))
        for model, a in (agreement or {}).items():
            metrics.update({f"{short(model)}.kendall_tau": a.kendall_tau,
                            f"{short(model)}.spearman_rho": a.spearman_rho})
        self.log_summary(parent, metrics)

    def log_report(self, report_dir: Path) -> None:
        """Attach the study report (markdown, PNGs, summary.json, and ``report.html``: the page with its
        figures embedded, which MLflow's artifact view shows with its pictures) to the parent run."""
        self.client.log_text(self.runs["parent"], report_html(report_dir / "report.md"), "report/report.html")
        self.client.log_artifacts(self.runs["parent"], str(report_dir), artifact_path="report")

    def finish_stage(self, metrics: dict[str, Any] | None = None, status: str = "FINISHED") -> None:
        """End the stage's run; a trial run still RUNNING now (its trial was killed, and the resumed stage
        never ran that configuration x seed again) ends KILLED."""
        run = self.runs["stages"].get(self.stage)
        if self._monitor is not None:
            system_metrics.stop(self._monitor)
            self._monitor = None
        if run:
            if metrics:
                self.log_summary(run, metrics)
            for stray in self.client.search_runs([self.experiment_id()], f"tags.mlflow.parentRunId = '{run}' "
                                                 "and attributes.status = 'RUNNING'", max_results=1000):
                self.client.set_terminated(stray.info.run_id, "KILLED")
            self.client.set_terminated(run, status)

    def stop_all(self) -> None:
        """A study stopped by a signal: every run of its experiment still RUNNING (trials, stages, the parent)
        ends KILLED; the next run of the same command takes them up again."""
        for run in when_unlocked(lambda: self.client.search_runs(
                [self.experiment_id()], "attributes.status = 'RUNNING'", max_results=5000)):
            when_unlocked(lambda run_id=run.info.run_id: self.client.set_terminated(run_id, "KILLED"))

    def finish(self, status: str = "FINISHED") -> None:
        if self.runs["parent"]:
            self.client.set_terminated(self.runs["parent"], status)
