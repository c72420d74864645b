"""The main job end to end on tiny models (stage 1): Tune + Optuna + Train + MLflow, and SIGKILL + resume."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from sbmoe_ray.analysis.records import group_trials, load_trials
from sbmoe_ray.study.layout import StudyLayout

from helpers import finish, held_sweep, runs, save_tiny_model, sweep, synthetic_dataset, wait_until_held, write_study

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("study")
    return {"model": save_tiny_model(root / "model", tokenizer), "data": synthetic_dataset(root / "data", 88),
            "other": synthetic_dataset(root / "other", 40)}


def test_a_study_with_two_seeds_tracks_every_replicate_in_mlflow(tmp_path, assets):
    # Relative storage and tracking paths, as in studies/experts_sweep.yaml: trials run in their own
    # trial folder, so the driver must make every path absolute before handing the config over.
    # A zero-shot validation set makes it a two-objective search (here another synthetic set's test split
    # stands in for another collection's dev split; the test set itself would be refused: it never chooses).
    config = write_study(tmp_path, assets, storage_path="studies", tracking_uri="sqlite:///mlflow.db",
                         **{"proxy.num_trials": 3, "proxy.seeds": 2,
                            "train.data.zero_shot_validation": str(assets["other"]),
                            "train.data.zero_shot_validation_split": "test"})
    proc = sweep(config, cwd=tmp_path)
    output = finish(proc, 600)
    assert proc.returncode == 0, output[-4000:]
    study_dir = tmp_path / "studies" / "tiny-study"
    proxy_dir = study_dir / "proxy"
    assert list((tmp_path / "studies" / "embedding_cache").rglob("*.npy"))
    assert not list((proxy_dir / "tune").glob("*/embedding_cache")) and not list((proxy_dir / "tune").glob("*/studies"))
    records = load_trials(StudyLayout(study_dir).proxy)
    trained = {r.trial_id for r in records if not r.is_baseline}
    assert trained and trained == {p.parent.name for p in (proxy_dir / "runs").glob("*/progress.jsonl")}
    assert {r.route for r in records} == {"zero_shot", "cached_head"} and len(records) == 6
    # Tune's Repeater asked the searcher for 3 configurations and ran each with seeds 0 and 1.
    groups = group_trials(records)
    assert len(groups) == 3 and all(g.seeds == [0, 1] for g in groups)
    moe_groups = [g for g in groups if not g.is_baseline]
    assert all(g.records[0].best_metrics != g.records[1].best_metrics for g in moe_groups)   # other seeds, other runs
    all_runs = runs(tmp_path)
    parents = [r for r in all_runs if r.data.tags.get("sbmoe.kind") == "study"]
    trials = [r for r in all_runs if r.data.tags.get("sbmoe.kind") == "trial"]
    assert len(parents) == 1 and len(trials) == 6
    (stage,) = [r for r in all_runs if r.data.tags.get("sbmoe.kind") == "stage"]     # promote: 0, stage 1 only
    assert stage.data.tags["sbmoe.stage"] == "proxy" and stage.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert all(r.data.tags["mlflow.parentRunId"] == stage.info.run_id for r in trials)
    # Run names say what the trial is: "model baseline s0", or "model N=3 k=1 all lr=2.1e-3 s1".
    names = sorted(r.info.run_name for r in trials)
    assert names[-2:] == ["model baseline s0", "model baseline s1"], names
    assert all(re.fullmatch(r"model N=\d k=\d (all|top-k) lr=\d\.\de-\d s[01]", n) for n in names[:-2]), names
    by_group = {}
    for run in trials:
        by_group.setdefault(run.data.tags["sbmoe.group"], set()).add(run.data.tags["sbmoe.seed"])
    assert sorted(by_group.values(), key=sorted) == [{"0", "1"}] * 3
    assert all(r.info.status == "FINISHED" for r in all_runs)
    dataset = Path(assets["data"]).name
    for run in trials:
        metrics, params = run.data.metrics, run.data.params
        assert 0.0 <= metrics[f"{dataset}.ndcg_at_10"] <= 1.0
        assert {"base_model", "num_experts", "top_k", "inference", "moe_lr"} <= set(params)   # same columns
        if params["num_experts"] != "0":
            assert 1 <= int(params["top_k"]) <= int(params["num_experts"])
            assert f"{dataset}.p_adjusted_ndcg_at_10" in metrics
            assert metrics[f"{dataset}.p_adjusted_ndcg_at_10"] >= metrics[f"{dataset}.p_value_ndcg_at_10"]
            assert "train_load.load_cv" in metrics and f"{dataset}.p_value_ndcg_at_10" in metrics
        else:
            assert params["inference"] == "n/a"
    assert "configuration chosen by mean val_loss" in output and "3 configurations" in output
    report = tmp_path / "studies" / "tiny-study" / "report"
    assert (report / "report.md").is_file() and (report / f"heatmap_{dataset}.png").is_file()
    summary = json.loads((report / "summary.json").read_text())
    chosen = summary["per_base_model"][0]["chosen"]
    assert summary["correction"] == "holm" and summary["budget"]["seeds"] == 2 and chosen["seeds"] == [0, 1]
    best = min(moe_groups, key=lambda g: g.objective)                  # mean validation loss over the seeds
    assert chosen["trial_ids"] == [r.trial_id for r in best.records]
    # Every trial reports its best checkpoint's zero-shot validation nDCG@10; the report has the front.
    assert all(0.0 <= r.best_metrics["zs_val_ndcg@10"] <= 1.0 for r in records)
    assert all("zs_objective" in run.data.metrics for run in trials)
    (part,) = summary["pareto"].values()
    front = [(p["objective"], p["zero_shot_objective"]) for p in part["front"]]
    points = [(g.objective, sum(r.best_metrics["zs_val_ndcg@10"] for r in g.records) / 2) for g in moe_groups]
    assert front and all(not any(o[0] <= f[0] and o[1] >= f[1] and o != f for o in points) for f in front)
    assert (report / "pareto.png").is_file() and "Pareto" in (report / "report.md").read_text()
    parent = parents[0].data
    assert parent.tags["sbmoe.chosen.model"] == chosen["config"] and f"model.{dataset}.delta" in parent.metrics


def test_a_killed_study_with_seeds_resumes_without_retraining_finished_trials(tmp_path, assets):
    # Killed inside a configuration's replicates (the driver held after the first finished trial, so the test
    # cannot miss the moment): the restored Repeater completes that group. The trials
    # train the head on cached embeddings in their own process, each shorter than Ray Tune's experiment
    # checkpoint period: the restored Tuner remembers fewer finished trials than there are, and each
    # configuration x seed must still train once (its results file answers).
    config = write_study(tmp_path, assets, **{"train.optim.epochs": 4,
                                               "proxy.num_trials": 2, "proxy.seeds": 2, "space.num_experts": [2, 3],
                                               "proxy.max_concurrent": 1})
    study_dir = tmp_path / "studies" / "tiny-study"
    proxy_dir = study_dir / "proxy"
    holding = tmp_path / "holding"
    proc = held_sweep(config, holding)             # held after its first finished trial: inside the group's seeds
    wait_until_held(proc, holding)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)            # driver and the local Ray it started
    proc.wait(timeout=60)
    assert len(list((proxy_dir / "runs").glob("*/results.json"))) < 4
    finished_before = {p.parent.name: p.stat().st_mtime for p in (proxy_dir / "runs").glob("*/results.json")}
    starts_before = {p.parent.name: p.read_text().count("epoch_start") for p in (proxy_dir / "runs").glob("*/progress.jsonl")}

    resumed = sweep(config, "--resume")
    output = finish(resumed, 600)
    assert resumed.returncode == 0, output[-4000:]
    records = load_trials(StudyLayout(study_dir).proxy)
    assert len(records) == 4 and [g.seeds for g in group_trials(records)] == [[0, 1], [0, 1]]
    for trial_id, mtime in finished_before.items():
        assert (proxy_dir / "runs" / trial_id / "results.json").stat().st_mtime == mtime
    for record in records:                                  # finished trials were not trained again
        progress = (proxy_dir / "runs" / record.trial_id / "progress.jsonl").read_text()
        if record.trial_id in finished_before:
            assert progress.count("epoch_start") == starts_before[record.trial_id]
    trials = [r for r in runs(tmp_path) if r.data.tags.get("sbmoe.kind") == "trial"]
    assert len(trials) == 4 and len({r.info.run_name for r in trials}) == 4
    assert all(r.info.status == "FINISHED" for r in runs(tmp_path))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


# Ray Tune's own output, which a study replaces with its progress lines: its experiment table and a warning about
# the trial a stop interrupted before its first report (it runs again).
TUNE_CHATTER = re.compile(r"Configuration for experiment|Failed to fetch metrics|To visualize your results")


def test_a_signal_stops_a_study_within_seconds_its_runs_killed_and_the_same_command_resumes_it(tmp_path, assets):
    """Ctrl-C (SIGINT to the study's process) during stage 1, then SIGTERM to the resumed study: each time the
    study stops within seconds (Tune's own handler would only end the stage), its MLflow runs in progress end
    KILLED, no process of its Ray is left, and the same command goes on without training a finished trial again.
    One study for both signals, each run held after the first trial it completes (a resumed one may complete a
    finished trial from its record first)."""
    config = write_study(tmp_path, assets, **{"proxy.num_trials": 3, "proxy.max_concurrent": 1})
    finished = tmp_path / "studies" / "tiny-study" / "proxy" / "finished"
    kept: dict[str, int] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        holding = tmp_path / f"holding-{signum.name}"
        proc = held_sweep(config, holding)       # held after the first trial it finishes: it cannot end first
        wait_until_held(proc, holding)
        proc.send_signal(signum)
        sent = time.monotonic()
        output = finish(proc, 60)
        stopped_in = time.monotonic() - sent
        assert proc.returncode == 128 + signum, output[-4000:]
        assert stopped_in < 30 and f"stopped by {signum.name}" in output
        assert not TUNE_CHATTER.search(output), output[-4000:]           # a resumed stage is quiet too
        found = runs(tmp_path)
        assert found and not [r for r in found if r.info.status == "RUNNING"]
        assert any(r.info.status == "KILLED" for r in found)        # the parent and the stage at least
        deadline = time.monotonic() + 30
        while _group_alive(proc.pid) and time.monotonic() < deadline:   # Ray's own processes go with it
            time.sleep(0.5)
        assert not _group_alive(proc.pid), "a process of the stopped study's Ray is still running"
        now = {p.name: p.stat().st_mtime_ns for p in finished.iterdir()}
        assert now and all(now[name] == mtime for name, mtime in kept.items())     # none trained again
        kept = now
    again = sweep(config)
    output = finish(again, 600)
    assert again.returncode == 0 and not TUNE_CHATTER.search(output), output[-4000:]
    done = {p.name: p.stat().st_mtime_ns for p in finished.iterdir()}
    assert len(done) == 3 and all(done[name] == mtime for name, mtime in kept.items())
    assert all(r.info.status == "FINISHED" for r in runs(tmp_path))
