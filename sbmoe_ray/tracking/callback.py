"""The Tune callback that logs each trial into its MLflow run while the stage runs.

Params and per-epoch and final metrics go into each trial's nested run, at the optimizer step each epoch
ended on (learning curves against steps; older records: the epoch) (files are attached at the end of
the stage, from what the report wrote: :meth:`sbmoe_ray.tracking.runs.StudyTracker.log_trial_files`).
Epoch metrics are buffered and written in one request at most every ``flush_seconds`` and at the trial's
end: a trial of seconds costs four requests, a long trial still shows its epochs as it goes. Ray's stock
``MLflowLoggerCallback`` would open a second run for a restored trial and leave the first RUNNING; this
one finds the run a trial already has (:meth:`~sbmoe_ray.tracking.runs.StudyTracker.trial_run`).
"""

from __future__ import annotations

import json
import time

from ray import tune

from sbmoe_ray.study.points import TrialPoint
from sbmoe_ray.tracking.runs import StudyTracker
from sbmoe_ray.tracking.store import metric_entities


class MlflowStudyCallback(tune.Callback):
    def __init__(self, tracker: StudyTracker, flush_seconds: float = 10.0) -> None:
        self.tracker, self.flush_seconds = tracker, flush_seconds
        self._pending: dict[str, list] = {}
        self._flushed: dict[str, float] = {}
        self._logged: dict[str, set[int]] = {}      # epochs (1-based) each trial reported one by one

    def _run(self, trial, starting: bool = False) -> str:
        return self.tracker.trial_run(trial.trial_id, TrialPoint.of(trial.config), starting)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._run(trial, starting=True)
        self._flushed[trial.trial_id] = time.monotonic()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        pending = self._pending.setdefault(trial.trial_id, [])
        epochs = int(result.get("epochs_done", 0))
        step = int(result.get("steps_done") or epochs)        # learning curves against optimizer steps
        if not result.get("final"):
            self._logged.setdefault(trial.trial_id, set()).add(epochs)
        elif result.get("history"):                 # epochs that were not reported one by one
            pending += self._unreported_epochs(trial.trial_id, json.loads(result["history"]))
        pending += metric_entities(result, step=step)
        if result.get("final") or time.monotonic() - self._flushed.get(trial.trial_id, 0.0) >= self.flush_seconds:
            self._flush(trial)

    def _unreported_epochs(self, trial_id: str, history: list[dict]) -> list:
        """The epochs of a trial's final report that it did not report one by one."""
        logged = self._logged.get(trial_id, set())
        return [m for row in history if row["epoch"] + 1 not in logged
                for m in metric_entities({**row, "epochs_done": row["epoch"] + 1},
                                         step=int(row.get("steps_done") or row["epoch"] + 1))]

    def _flush(self, trial) -> None:
        batch = self._pending.pop(trial.trial_id, [])
        if batch:
            self.tracker.log_metric_batch(self._run(trial), batch)
        self._flushed[trial.trial_id] = time.monotonic()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._flush(trial)
        self.tracker.client.set_terminated(self._run(trial), "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._flush(trial)
        self.tracker.client.set_terminated(self._run(trial), "FAILED")
