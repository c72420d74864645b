"""Stage 1, the proxy: Optuna TPE inside Ray Tune over the search space, a frozen encoder, seconds a trial.

For each base model a baseline is enqueued first (``num_experts = 0``: the zero-shot model when the
encoder is frozen), so every SB-MoE trial has a paired baseline (:mod:`sbmoe_ray.study.space`), and then
stage 2's ``finetune.controls`` configurations drawn uniformly from the space (not from TPE's picks). Only a
trial's final report is told to Optuna as COMPLETE: a trial stopped early by ASHA is told as PRUNED, so
its partial value never biases TPE. With ``proxy.seeds = n`` Tune's ``Repeater`` runs each suggested
configuration n times (replicate r trains with seed ``train.run.seed + r``) and tells Optuna the mean
objective of the n replicates; ASHA is then refused (the Repeater is not meant for early stopping). With
a zero-shot validation set the search has two objectives (Optuna multi-objective TPE).
"""

from __future__ import annotations

import functools
import math
import sys
import time
import warnings
from typing import Any

import numpy as np
import optuna
from ray import tune
from ray.tune.search import Repeater
from ray.tune.search.optuna import OptunaSearch

from sbmoe_ray.analysis import figures
from sbmoe_ray.analysis.records import load_trials
from sbmoe_ray.analysis.report import write_report
from sbmoe_ray.analysis.result import StageResult, analyze_proxy
from sbmoe_ray.analysis.sections.first_screen import terminal_answer
from sbmoe_ray.analysis.sections.method import budget_line
from sbmoe_ray.runtime.signals import raise_if_stopped
from sbmoe_ray.stages.grid import restorable
from sbmoe_ray.stages.progress import ProgressCallback, tune_verbosity
from sbmoe_ray.stages.trial import trainable, trials_in_process
from sbmoe_ray.study.config import StudyConfig
from sbmoe_ray.study.space import define_space, space_draws
from sbmoe_ray.tracking import MlflowStudyCallback, StudyTracker
from sbmoe_ray.tracking.optuna_journal import mirror


class FinalResultOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna only final results as COMPLETE, and mirrors each finished trial into
    an Optuna journal file for optuna-dashboard (:mod:`sbmoe_ray.tracking.optuna_journal`)."""

    journal: str | None = None        # the journal file (None: no mirror)
    journal_name: str = "proxy"

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        # With seeds, Tune's Repeater passes only {objective: mean over the replicates}: final by construction.
        if result is not None and result.get("final") is False:
            result = None          # stopped early (ASHA): PRUNED, not COMPLETE with a partial value
        elif result is not None and math.isnan(result.get("objective", float("nan"))):
            result = None          # zero-shot baseline: nothing trained, nothing to tell TPE
        super().on_trial_complete(trial_id, result, error)
        if self.journal and trial_id in self._ot_trials:
            trial = self._ot_study.get_trials(deepcopy=False)[self._ot_trials[trial_id].number]
            try:                   # a view for optuna-dashboard: it must never stop the search
                mirror(self.journal, self.journal_name, [d.name.lower() for d in self._ot_study.directions], trial)
            except Exception as exc:  # noqa: BLE001
                raise_if_stopped()          # a signal the journal's lock turned into an OSError
                print(f"sbmoe: warning: {self.journal}: trial not mirrored for optuna-dashboard ({exc})",
                      file=sys.stderr)


class MeanRepeater(Repeater):
    """Tune's ``Repeater`` that averages every metric of a multi-objective searcher over the replicates
    (the stock one reads a single metric name)."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, **kwargs) -> None:
        metrics = self.searcher.metric if isinstance(self.searcher.metric, list) else [self.searcher.metric]
        group = self._trial_id_to_group[trial_id]
        group.report(trial_id, [float((result or {}).get(m, np.nan)) for m in metrics])
        if group.finished_reporting():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)      # all-NaN: a zero-shot baseline
                means = np.nanmean(np.array(group.scores(), dtype=float), axis=0)
            self.searcher.on_trial_complete(group.primary_trial_id, result=dict(zip(metrics, means.tolist())),
                                            **kwargs)


def baselines(study: StudyConfig) -> list[dict[str, Any]]:
    """One enqueued baseline trial per base model, when the space's ``num_experts`` lists 0."""
    if 0 not in study.space["num_experts"]:
        return []
    return [{"base_model": m, "baseline": 1} for m in study.space["base_model"]]


def controls(study: StudyConfig) -> list[dict[str, Any]]:
    """Stage 2's controls, drawn from the space and enqueued in stage 1 (with a stage 2 only)."""
    if not study.promote or not study.finetune.controls:
        return []
    return [p for m in study.space["base_model"]
            for p in space_draws(study.space, m, study.finetune.controls, study.proxy.seed)]


def searcher(study: StudyConfig) -> FinalResultOptunaSearch:
    """Seeded TPE (Optuna) over the study's space, each base model's baseline and stage 2's controls
    enqueued first; two objectives (Optuna multi-objective TPE) with a zero-shot validation set."""
    names, modes = list(study.proxy_objectives), list(study.proxy_objectives.values())
    search = FinalResultOptunaSearch(space=functools.partial(define_space, space=study.space),
                                     metric=names if len(names) > 1 else names[0],
                                     mode=modes if len(modes) > 1 else modes[0],
                                     points_to_evaluate=baselines(study) + controls(study) or None,
                                     sampler=optuna.samplers.TPESampler(seed=study.proxy.seed))
    search.journal, search.journal_name = str(study.layout.proxy.optuna_journal), f"{study.name}-proxy"
    return search


def proxy_tuner(study: StudyConfig, callbacks: list) -> tune.Tuner:
    """Stage 1's Tuner, new or the interrupted one restored (finished trials kept, interrupted ones resumed)."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    stage, proxy, folder = study.proxy_stage(), study.proxy, study.layout.proxy
    if restorable(folder.tune):
        return tune.Tuner.restore(str(folder.tune), trainable=trainable(stage, study.space), resume_errored=True)
    scheduler = (ASHAScheduler(metric="objective", mode=stage.mode, time_attr="epochs_done",
                               grace_period=proxy.asha_grace_epochs, max_t=study.train.optim.epochs)
                 if proxy.asha else None)
    # Seeds: Tune's Repeater asks the searcher once per configuration, runs it `seeds` times (each
    # replicate a trial with its index in the config) and tells the searcher the mean objective.
    algorithm = MeanRepeater(searcher(study), repeat=proxy.seeds) if proxy.seeds > 1 else searcher(study)
    folder.folder.mkdir(parents=True, exist_ok=True)
    return tune.Tuner(
        trainable(stage, study.space),
        # In-process trials of seconds: one trial actor serves the next (no process start, imports and
        # file reads per trial); the datasets, cache entries and model hashes stay loaded in it.
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(algorithm, max_concurrent=proxy.max_concurrent),
                                    scheduler=scheduler, num_samples=proxy.num_trials * proxy.seeds,
                                    reuse_actors=trials_in_process(stage, study.space)),
        run_config=tune.RunConfig(name=folder.tune.name, storage_path=str(folder.folder), callbacks=callbacks,
                                  failure_config=tune.FailureConfig(max_failures=1), verbose=tune_verbosity()))


def run_proxy(study: StudyConfig, tracker: StudyTracker) -> StageResult:
    """Stage 1: the search, then its result (read once from the trials' files), report and MLflow runs."""
    stage = tracker.for_stage("proxy", "stage 1: proxy (frozen encoder, SB-MoE head)")
    started, total = time.monotonic(), study.proxy.num_trials * study.proxy.seeds
    tuner = proxy_tuner(study, callbacks=[MlflowStudyCallback(stage), ProgressCallback("proxy", total)])
    failed = len(tuner.fit().errors)
    result = analyze_proxy(study, load_trials(study.layout.proxy), failed)
    stage.log_stage_result(result)
    write_report(study, result)
    say_result(study, result)
    stage.log_trial_files(figures.write_trial_figures(study.layout.trial_figures, result.records))
    stage.finish_stage({"seconds": time.monotonic() - started}, "FAILED" if failed else "FINISHED")
    tracker.log_answer(result.summary)
    tracker.log_report(study.layout.report_dir)
    print(f"report: {study.layout.report_file}\nMLflow: {study.tracking_uri} (experiment {study.name!r})")
    if failed:
        print(f"{failed} trial(s) failed: see {study.layout.proxy.tune}/*/error.txt; run the study again to "
              "retry them", file=sys.stderr)
    return result


def say_result(study: StudyConfig, result: StageResult) -> None:
    """Stage 1's answer in the terminal: the primary claim, then per collection (queries and seeds together)."""
    print(f"\n{study.name}, stage 1 (proxy): {len(result.records)} trials. {budget_line(result.summary)}")
    print("\n".join(terminal_answer(result.summary, "stage 1 (a head on the frozen encoder)", False)), flush=True)
