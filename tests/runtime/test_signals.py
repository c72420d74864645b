"""Ctrl-C and SIGTERM stop a study even where a library swallows the interrupt."""

from __future__ import annotations

import os
import signal

import pytest
from ray import tune

from sbmoe_ray.runtime.signals import Stopped, raise_if_stopped, stopping_on_signals
from sbmoe_ray.stages.proxy import FinalResultOptunaSearch


def _interrupted_rename(monkeypatch):
    """``os.rename`` that delivers SIGINT to this process just before renaming: the moment a Ctrl-C lands
    inside optuna's journal lock release."""
    real = os.rename

    def rename(*args, **kwargs):
        monkeypatch.setattr(os, "rename", real)          # once
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)


def test_a_ctrl_c_inside_optunas_journal_lock_still_stops_the_search_that_mirrors_a_trial(tmp_path, monkeypatch):
    search = FinalResultOptunaSearch(space={"x": tune.uniform(0.0, 1.0)}, metric="objective", mode="min")
    search.journal = str(tmp_path / "optuna-journal.log")
    assert search.suggest("t1") is not None
    with stopping_on_signals():
        _interrupted_rename(monkeypatch)
        with pytest.raises(Stopped) as stop:
            search.on_trial_complete("t1", {"objective": 0.5})
    assert stop.value.exit_code == 130


def test_a_signal_turned_into_another_error_is_raised_again_and_a_new_study_starts_unstopped():
    with stopping_on_signals():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            pytest.fail("the handler did not raise")
        except Stopped:
            pass
        with pytest.raises(Stopped) as stop:
            raise_if_stopped()
        assert stop.value.exit_code == 128 + signal.SIGTERM
    with stopping_on_signals():
        raise_if_stopped()                    # the last study's signal does not stop this one
