"""The MLflow tracker records what it is given, into a real (temporary SQLite) store: one parent, a run per
stage, a run per trial found again after a restore (no duplicate), a stage's comparisons on its trials' runs,
the answer on the parent; the Tune callback logs epochs a trial handed over only at its end."""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from sbmoe_ray.analysis.result import analyze_proxy
from sbmoe_ray.study.config import StudyConfig
from sbmoe_ray.study.points import TrialPoint
from sbmoe_ray.tracking import MlflowStudyCallback, StudyTracker

from helpers import study


@pytest.fixture
def store(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "mlflow_runs.json"


def hand_study(tmp_path) -> StudyConfig:
    return StudyConfig.from_dict({"name": "hand", "storage_path": str(tmp_path / "studies"), "space": {
        "base_model": ["m"], "num_experts": [0, 3]}, "train": {"data": {"test_datasets": ["a", "b"]}}})


def test_the_parent_and_stage_runs_are_created_once_and_reopened_on_resume(store):
    uri, runs_file = store
    first = StudyTracker(uri, "hand", runs_file)
    parent = first.start_study({"space": {"num_experts": [0, 3]}, "dataset": {"a": {"sha256": "abc"}}})
    stage = first.for_stage("proxy", "stage 1")
    first.finish()
    again = StudyTracker(uri, "hand", runs_file)                     # a resumed study: a new process
    assert again.start_study({"ignored": 1}) == parent and again.for_stage("proxy", "stage 1").runs == stage.runs
    client = MlflowClient(uri)
    run = client.get_run(parent)
    assert run.info.status == "RUNNING" and run.data.params == {"space.num_experts": "[0, 3]", "dataset.a.sha256": "abc"}
    assert json.loads(runs_file.read_text()) == {"parent": parent, "stages": {"proxy": stage.runs["stages"]["proxy"]}}
    (staged,) = client.search_runs([run.info.experiment_id], "tags.`sbmoe.kind` = 'stage'")
    assert staged.data.tags["mlflow.parentRunId"] == parent


def test_a_restored_copy_finds_each_trials_run_and_opens_no_second(store):
    uri, runs_file = store
    tracker = StudyTracker(uri, "hand", runs_file, seed=10)
    tracker.start_study({})
    stage = tracker.for_stage("proxy", "stage 1")
    point = TrialPoint({"base_model": "m", "num_experts": 3, "top_k": 1, "inference": "all", "moe_lr": 1e-3}, 1)
    run_id = stage.trial_run("t1", point)
    restored = pickle.loads(pickle.dumps(stage))                     # what Tune does with its callbacks
    assert restored.trial_run("t1", point, starting=True) == run_id
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.run_name == "m N=3 k=1 all lr=1.0e-3 s11" and run.data.tags["sbmoe.seed"] == "11"
    assert run.data.params["moe_lr"] == "0.001" and run.data.tags["sbmoe.stage"] == "proxy"
    baseline = stage.trial_run("b0", TrialPoint({"base_model": "m", "num_experts": 0}))
    assert MlflowClient(uri).get_run(baseline).data.params["top_k"] == "n/a"     # same columns for every trial
    finetune = tracker.for_stage("finetune", "stage 2")
    promoted = finetune.trial_run("f1", TrialPoint(point.params, 0, "promoted", ("t1",)))
    tags = MlflowClient(uri).get_run(promoted).data.tags
    assert tags["sbmoe.role"] == "promoted" and tags["sbmoe.promoted_from"] == run_id


def test_a_configuration_and_seed_keep_one_run_under_a_new_trial_id_and_a_stray_run_ends_killed(store):
    # After a kill, a restored Tuner can suggest a configuration x seed again under a new trial id: it reports
    # into the run that configuration x seed has. A trial run left RUNNING when its stage ends ends KILLED.
    uri, runs_file = store
    tracker = StudyTracker(uri, "hand", runs_file)
    tracker.start_study({})
    stage = tracker.for_stage("proxy", "stage 1")
    point = TrialPoint({"base_model": "m", "num_experts": 3, "top_k": 1, "inference": "all", "moe_lr": 1e-3}, 1)
    first = stage.trial_run("t1", point, starting=True)
    other_seed = stage.trial_run("t2", TrialPoint(point.params, 0), starting=True)
    resumed = pickle.loads(pickle.dumps(tracker)).for_stage("proxy", "stage 1")     # a new process
    assert resumed.trial_run("t9", point, starting=True) == first != other_seed
    assert resumed.trial_run("t9", point) == first
    finetune = resumed.for_stage("finetune", "stage 2")                  # the same point in stage 2: its own run
    assert finetune.trial_run("f1", TrialPoint(point.params, 1, "promoted", ("t1",))) not in (first, other_seed)
    resumed.client.set_terminated(first, "FINISHED")
    resumed.finish_stage()
    client = MlflowClient(uri)
    assert client.get_run(first).info.status == "FINISHED" and client.get_run(other_seed).info.status == "KILLED"
    experiment = client.get_experiment_by_name("hand").experiment_id
    assert len(client.search_runs([experiment], "tags.`sbmoe.kind` = 'trial'")) == 3


def test_a_stage_result_is_logged_on_its_trials_and_the_answer_on_the_parent(tmp_path, store):
    uri, runs_file = store
    result = analyze_proxy(hand_study(tmp_path), study(seeds=2))
    tracker = StudyTracker(uri, "hand", runs_file)
    parent = tracker.start_study({})
    stage = tracker.for_stage("proxy", "stage 1")
    for r in result.records:
        stage.trial_run(r.trial_id, TrialPoint(r.params, r.seed))
    stage.log_stage_result(result)
    tracker.log_answer(result.summary)
    client, runs = MlflowClient(uri), stage.trial_runs()
    for c in result.comparisons:
        for trial_id, own in zip(c.trial_ids, c.delta_per_seed):
            metrics = client.get_run(runs[trial_id]).data.metrics
            assert metrics[f"{c.dataset}.p_adjusted_ndcg_at_10"] == pytest.approx(c.p_adjusted)
            assert metrics[f"{c.dataset}.delta_this_seed_ndcg_at_10"] == pytest.approx(own)
    answer = result.summary.per_base_model[0]
    parent_run = client.get_run(parent).data
    assert parent_run.tags["sbmoe.chosen.m"] == answer.chosen.config
    assert parent_run.metrics["m.a.delta"] == pytest.approx(answer.datasets["a"].delta)


def test_the_callback_logs_the_epochs_a_trial_reported_only_at_its_end(store):
    uri, runs_file = store
    tracker = StudyTracker(uri, "hand", runs_file)
    tracker.start_study({})
    callback = MlflowStudyCallback(tracker.for_stage("proxy", "stage 1"))
    trial = SimpleNamespace(trial_id="t1", config={"base_model": "m", "num_experts": 0})
    callback.on_trial_start(0, [], trial)
    history = [{"epoch": 0, "val_loss": 2.0}, {"epoch": 1, "val_loss": 1.5}]
    callback.on_trial_result(0, [], trial, {"final": True, "epochs_done": 2, "objective": 1.5,
                                            "history": json.dumps(history)})
    callback.on_trial_complete(0, [], trial)
    run_id = callback.tracker.trial_runs()["t1"]
    client = MlflowClient(uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val_loss")] == [(1, 2.0), (2, 1.5)]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_stopped_study_ends_its_runs_killed_while_another_writer_holds_the_store(tmp_path, store):
    import sqlite3
    import threading
    import time

    uri, runs_file = store
    tracker = StudyTracker(uri, "hand", runs_file)
    parent = tracker.start_study({"space": {"num_experts": [0, 3]}})
    stage = tracker.for_stage("proxy", "stage 1")
    stage.finish_stage()          # its system-metrics thread stopped: this test's writer is the only other one
    stage = tracker.for_stage("finetune", "stage 2")
    locked, held = threading.Event(), 2.0

    def writer():                 # another writer's transaction (MLflow waits up to 20 s; what it cannot wait out, an
        # immediate SQLITE_BUSY when two transactions would deadlock, is what when_unlocked retries)
        db = sqlite3.connect(tmp_path / "mlflow.db", timeout=30)
        db.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(held)
        db.rollback()
        db.close()

    thread = threading.Thread(target=writer)
    thread.start()
    locked.wait(10)
    started = time.monotonic()
    tracker.stop_all()
    thread.join()
    client = MlflowClient(uri)
    assert client.get_run(parent).info.status == "KILLED" and time.monotonic() - started >= held / 2
    assert client.get_run(stage.runs["stages"]["finetune"]).info.status == "KILLED"


def test_a_signal_that_cuts_a_store_write_short_leaves_no_lock_on_marking_the_runs_killed(tmp_path, store):
    """Ctrl-C right after a statement of MLflow's write transaction (the study's last write, ending its parent
    run): the session, with SQLite's write lock, lives on in the traceback's frames until the stop lets go of
    them (``signals.release``, what the pipeline does); then every run ends KILLED at once."""
    import os
    import signal
    import time

    from sqlalchemy.engine.default import DefaultDialect

    from sbmoe_ray.runtime.signals import Stopped, release, stopping_on_signals

    uri, runs_file = store
    tracker = StudyTracker(uri, "hand", runs_file)
    parent = tracker.start_study({})
    real = DefaultDialect.do_execute

    def interrupted(self, cursor, statement, parameters, context=None):     # the signal lands as a SELECT returns
        out = real(self, cursor, statement, parameters, context)              # inside the write transaction
        if statement.lstrip().upper().startswith("SELECT"):
            DefaultDialect.do_execute = real
            os.kill(os.getpid(), signal.SIGINT)
        return out

    with stopping_on_signals():
        DefaultDialect.do_execute = interrupted
        try:
            with pytest.raises(Stopped) as stop:
                tracker.finish()
        finally:
            DefaultDialect.do_execute = real
        release(stop.value)
        started = time.monotonic()
        tracker.stop_all()
    assert time.monotonic() - started < 5
    assert MlflowClient(uri).get_run(parent).info.status == "KILLED"
