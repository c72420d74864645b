"""Stage 2's trials as one grid on Ray Tune: the fine-tunings stage 2 selects among, and, with the same
code, its confirmation's fresh replicates (:mod:`sbmoe_ray.stages.confirm`). Each grid point is one
configuration x replicate, a Ray Train run inside a Tune function trainable; the Tuner is restored when
the study was interrupted, so a killed trial resumes from its last checkpoint like any other.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ray import tune

from sbmoe_ray.analysis.records import TrialRecord, load_trials
from sbmoe_ray.stages.progress import ProgressCallback, tune_verbosity
from sbmoe_ray.stages.trial import trainable, trials_in_process
from sbmoe_ray.study.config import StudyConfig
from sbmoe_ray.study.points import TrialPoint
from sbmoe_ray.tracking import MlflowStudyCallback, StudyTracker


def restorable(folder: Path) -> bool:
    """Whether a stage's Tuner has something to restore: Tune's own check (its ``tuner.pkl``) and an experiment
    state. A Tuner killed before its first state snapshot has only the former; ``Tuner.restore`` then logs an
    ERROR traceback ("no experiment state file ... expected if you are launching a new experiment") and starts
    afresh, so a new Tuner is made instead (finished trials are still known by their files:
    :mod:`sbmoe_ray.stages.trial`)."""
    return tune.Tuner.can_restore(str(folder)) and any(Path(folder).glob("experiment_state-*.json"))


def finetune_tuner(study: StudyConfig, points: list[TrialPoint], callbacks: list, confirm: bool = False) -> tune.Tuner:
    """Stage 2's Tuner (or its confirmation's): a grid over the points (restored when interrupted)."""
    stage = study.confirm_stage() if confirm else study.finetune_stage()
    folder = study.layout.confirm if confirm else study.layout.finetune
    space = {"point": tune.grid_search([p.grid_value() for p in points])}
    if restorable(folder.tune):
        # The space again: a Tuner killed before its first trial restores without one (one empty trial).
        return tune.Tuner.restore(str(folder.tune), trainable=trainable(stage, study.space), param_space=space,
                                  resume_errored=True)
    folder.folder.mkdir(parents=True, exist_ok=True)
    return tune.Tuner(
        trainable(stage, study.space), param_space=space,
        # Trials in their own process (one worker): one trial actor serves the next, as in stage 1 (no
        # process start and imports per fine-tuning; the cached states are memory-mapped, not held).
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=study.finetune.max_concurrent,
                                    reuse_actors=trials_in_process(stage, study.space)),
        run_config=tune.RunConfig(name=folder.tune.name, storage_path=str(folder.folder), callbacks=callbacks,
                                  failure_config=tune.FailureConfig(max_failures=1), verbose=tune_verbosity()))


def fit_grid(study: StudyConfig, stage: StudyTracker, points: list[TrialPoint], confirm: bool = False
             ) -> list[TrialRecord] | None:
    """Train ``points`` on stage 2's grid Tuner (or its confirmation's), resumed when interrupted; their
    records, or None when a trial failed (the stage run then ends FAILED; run the study again to retry)."""
    name, folder = ("confirm", study.layout.confirm) if confirm else ("finetune", study.layout.finetune)
    callbacks = [MlflowStudyCallback(stage), ProgressCallback(name, len(points))]
    failed = len(finetune_tuner(study, points, callbacks, confirm).fit().errors)
    if failed:
        print(f"{failed} {name} trial(s) failed: see {folder.tune}/*/error.txt; run the study again to retry them",
              file=sys.stderr)
        stage.finish_stage(status="FAILED")
        return None
    return load_trials(folder)
