"""The search's history for optuna-dashboard: finished trials mirrored into an Optuna journal file, each
configuration once however often it is reported (a resumed study), values only for COMPLETE trials, and
both objectives of a two-objective search."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from sbmoe_ray.tracking.optuna_journal import journal_study, mirror


def _search(directions: list[str]) -> optuna.Study:
    study = optuna.create_study(directions=directions, sampler=optuna.samplers.TPESampler(seed=0))
    for i in range(4):
        trial = study.ask()
        x = trial.suggest_float("moe_lr", 1e-4, 1e-2, log=True)
        n = trial.suggest_categorical("num_experts", [3, 6])
        if i == 3:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, [x * n] * len(directions))
    return study


def test_each_configuration_is_mirrored_once_and_reads_back_as_the_search(tmp_path):
    search = _search(["minimize"])
    path = tmp_path / "optuna-journal.log"
    added = [mirror(path, "s-proxy", ["minimize"], t) for t in search.trials]
    again = [mirror(path, "s-proxy", ["minimize"], t) for t in search.trials]     # a resume reports them again
    assert added == [True] * 4 and again == [False] * 4
    mirrored = journal_study(path, "s-proxy", ["minimize"]).trials
    assert [t.params for t in mirrored] == [t.params for t in search.trials]
    assert [t.state for t in mirrored] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED]
    assert [t.value for t in mirrored[:3]] == [t.value for t in search.trials[:3]] and mirrored[3].values is None
    assert optuna.load_study(study_name="s-proxy", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(path)))).best_trial.params == search.best_trial.params


def test_a_running_trial_is_not_mirrored_and_two_objectives_keep_both_values(tmp_path):
    search = _search(["minimize", "maximize"])
    running = search.ask()
    path = tmp_path / "j.log"
    assert not mirror(path, "two", ["minimize", "maximize"], search.trials[running.number])
    assert all(mirror(path, "two", ["minimize", "maximize"], t) for t in search.trials[:3])
    mirrored = journal_study(path, "two", ["minimize", "maximize"])
    assert [t.values for t in mirrored.trials] == [t.values for t in search.trials[:3]]
    assert len(mirrored.best_trials) >= 1


def test_an_enqueued_point_outside_its_distribution_is_mirrored_as_it_ran(tmp_path):
    search = optuna.create_study()
    search.enqueue_trial({"baseline": 1})                         # as the study enqueues each base model's baseline
    trial = search.ask()
    trial.suggest_int("baseline", 0, 0)                            # the define-by-run space of an SB-MoE trial
    search.tell(trial, state=TrialState.PRUNED)
    assert mirror(tmp_path / "j.log", "s", ["minimize"], search.trials[0])
    assert journal_study(tmp_path / "j.log", "s", ["minimize"]).trials[0].params == {"baseline": 1}
