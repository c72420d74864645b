"""The search's history for optuna-dashboard: every finished configuration of a stage-1 search, mirrored into
an Optuna journal file (``<study>/proxy/optuna-journal.log``) that ``optuna-dashboard <file>`` opens (history,
parameter importances, the Pareto front of a two-objective search).

Why a mirror, not the searcher's own storage: Ray Tune's ``OptunaSearch`` pickles its Optuna study into
Tune's experiment state, and ``Tuner.restore`` continues from that copy. A persistent storage handed to the
searcher would keep the trials asked after the last saved state as RUNNING forever and get the same
configurations asked again under new numbers. The mirror adds a trial only once it is finished, keyed by its
parameters: a resumed study (after SIGKILL, a restored Tuner that re-runs a trial) adds nothing twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

KEY = "sbmoe.configuration"


def journal_study(path: Path | str, name: str, directions: list[str]) -> optuna.Study:
    """The journal file's study (created on first use)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(path)))
    return optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True)


def _distributions(trial: FrozenTrial) -> dict[str, BaseDistribution]:
    """The trial's distributions, with a one-value categorical where its value lies outside its own (an
    enqueued point: the baseline's ``baseline=1`` under the define-by-run ``IntDistribution(0, 0)``)."""
    out = {}
    for name, distribution in trial.distributions.items():
        value = trial.params[name]
        try:
            inside = distribution._contains(distribution.to_internal_repr(value))
        except (ValueError, TypeError):
            inside = False
        out[name] = distribution if inside else CategoricalDistribution([value])
    return out


def mirror(path: Path | str, name: str, directions: list[str], trial: FrozenTrial) -> bool:
    """Add a finished trial to the journal unless its configuration is there; whether it was added."""
    if not trial.state.is_finished():
        return False
    study = journal_study(path, name, directions)
    key = json.dumps(trial.params, sort_keys=True, default=str)
    if any(t.user_attrs.get(KEY) == key for t in study.get_trials(deepcopy=False)):
        return False
    study.add_trial(optuna.trial.create_trial(
        params=trial.params, distributions=_distributions(trial), state=trial.state,
        values=trial.values if trial.state == TrialState.COMPLETE else None,
        user_attrs={**trial.user_attrs, KEY: key}))
    return True
