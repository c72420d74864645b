"""Progress of a stage in the terminal: one line per finished trial, with an estimate of the time left."""

from __future__ import annotations

import os
import time

from ray import tune

from sbmoe_ray.runtime.signals import raise_if_stopped

VERBOSE_ENV = "SBMOE_VERBOSE"      # `sbmoe study --verbose` sets it: Ray Tune's own trial tables come back


def tune_verbosity() -> int:
    """Ray Tune's output: silent (the study prints its own progress lines), or its trial tables (``--verbose``).
    Silent needs Tune's classic reporter: its newer one prints an experiment table and a TensorBoard hint even at
    verbosity 0 (Ray 2.60, ``ray/tune/experimental/output.py``), and a restored Tuner reads the environment
    again, not the verbosity it was created with: :func:`quiet_third_parties` sets it for the whole command."""
    if os.environ.get(VERBOSE_ENV) == "1":
        return 2
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    return 0


def quiet_third_parties() -> None:
    """Off unless ``--verbose``: the libraries' chatter that tells a study's user nothing (Optuna's, MLflow's and
    Ray Tune's INFO lines, MLflow's artifact-download bars). Warnings that matter stay."""
    import logging

    if os.environ.get(VERBOSE_ENV) == "1":
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    tune_verbosity()                # Tune's classic reporter, silent: for restored Tuners too
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # ray.tune: "Wrote the latest version of all result files and experiment state to ..." after each stage
    for name in ("mlflow.system_metrics", "mlflow.tracking", "mlflow.store", "ray.tune", "ray.tune.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # A restored stage: "Failed to fetch metrics for 1 trial(s): ... result.json ... not found" for the trial that
    # was stopped before its first report (it runs again; the study reads its trials from its own files).
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


class ProgressCallback(tune.Callback):
    """``[proxy] 12/72 trials done in 1.3 min; ~6.4 min left``. Tune pickles its callbacks with the experiment:
    a copy restored in a later command counts the trials finished before it and times only its own."""

    def __init__(self, stage: str, total: int) -> None:
        self.stage, self.total = stage, total
        self._start()

    def _start(self) -> None:
        self.started, self.done, self.done_here = time.monotonic(), 0, 0

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._start()

    def on_step_end(self, iteration, trials, **info) -> None:
        raise_if_stopped()          # a signal some library in Tune's loop swallowed still stops the study

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        # This trial is not yet TERMINATED when Tune calls back; trials finished before a resume are.
        self.done = max(self.done + 1, sum(t.status == "TERMINATED" for t in trials) + 1)
        self.done_here += 1
        elapsed = time.monotonic() - self.started
        left = elapsed / self.done_here * (self.total - self.done)
        print(f"[{self.stage}] {self.done}/{self.total} trials done in {elapsed / 60:.1f} min; "
              f"~{left / 60:.1f} min left", flush=True)
