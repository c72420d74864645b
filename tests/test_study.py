"""The experts study end to end on tiny models: Tune + Optuna + Train + MLflow, and SIGKILL + resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from sbmoe_ray.analysis.records import group_trials, load_trials

from helpers import save_tiny_model, synthetic_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("study")
    return {"model": save_tiny_model(root / "model", tokenizer), "data": synthetic_dataset(root / "data", 88)}


def write_study(tmp_path: Path, assets, **overrides) -> Path:
    study = {
        "name": "tiny-study", "storage_path": str(tmp_path / "studies"),
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "space": {"base_model": [str(assets["model"])], "num_experts": [0, 2, 3], "top_k": [1, 2],
                  "moe_lr": [1e-3, 1e-2]},
        "search": {"num_trials": 4, "max_concurrent": 2, "seed": 0},
        "promote": 0,                               # stage 1 only (tests/test_two_stage.py has both)
        "train": {"model": {"max_length": 32},
                  "data": {"train_dataset": str(assets["data"]), "test_datasets": [str(assets["data"])],
                           "query_max_length": 16, "validation_fraction": 0.2},
                  "optim": {"encoder_lr": 0.0, "epochs": 2, "batch_size": 8},
                  "memory": {"precision": "fp32"}, "scaling": {"num_workers": 1, "cpus_per_worker": 0.5}},
    }
    for key, value in overrides.items():          # "section.key" or "train.section.key"
        *parents, leaf = key.split(".")
        target = study
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def sweep(config: Path, *extra: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "studies" / "experts_sweep.py"), "--config", str(config), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            **kwargs)


def runs(tmp_path: Path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny-study")
    return client.search_runs([experiment.experiment_id], max_results=100)


def test_a_study_with_two_seeds_tracks_every_replicate_in_mlflow(tmp_path, assets):
    # Relative storage and tracking paths, as in studies/experts_sweep.yaml: trials run in their own
    # trial folder, so the driver must make every path absolute before handing the config over.
    # A zero-shot validation set makes it a two-objective search (here the synthetic set's test split
    # stands in for another collection's dev split).
    config = write_study(tmp_path, assets, storage_path="studies", tracking_uri="sqlite:///mlflow.db",
                         **{"search.num_trials": 3, "search.seeds": 2,
                            "train.data.zero_shot_validation": str(assets["data"]),
                            "train.data.zero_shot_validation_split": "test"})
    proc = sweep(config, cwd=tmp_path)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-4000:]
    study_dir = tmp_path / "studies" / "tiny-study"
    assert list((tmp_path / "studies" / "embedding_cache").rglob("*.npy"))
    assert not list((study_dir / "tune").glob("*/embedding_cache")) and not list((study_dir / "tune").glob("*/studies"))
    records = load_trials(study_dir)
    trained = {r.trial_id for r in records if not r.is_baseline}
    assert trained and trained == {p.parent.name for p in (study_dir / "runs").glob("*/progress.jsonl")}
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


def test_bad_study_input_stops_before_ray_with_one_message(tmp_path, assets):
    cases = {
        "top_k": ({"space.top_k": 3}, "top_k=3: larger than num_experts=2"),
        "lr": ({"space.moe_lr": [1e-2, 1e-4]}, "moe_lr=[0.01, 0.0001]: expected [low, high]"),
        "lr0": ({"space.moe_lr": [0.0, 1e-2]}, "moe_lr=[0.0, 0.01]: expected [low, high] with 0 < low"),
        "parameter": ({"space.experts": [1]}, "config.space.experts=[1]: unknown search parameter"),
        "dataset": ({"train.data.test_datasets": ["/nonexistent/no-such-set"]}, "has no corpus.jsonl"),
        "key": ({"search.num_trial": 4}, "config.search.num_trial=4: unknown key; allowed keys are"),
        "moved": ({"num_trials": 4}, "config.num_trials=4: this key moved to config.search.num_trials"),
        "type": ({"search.num_trials": "many"}, "config.search.num_trials='many': expected int"),
        "model": ({"space.base_model": ["no-such-org/no-such-model"]}, "could not load base model"),
        "split": ({"train.data.train_split": "dev"}, "no split 'dev'"),
        "tracking": ({"tracking_uri": "http://127.0.0.1:9"}, "MLflow server is unreachable"),
        "storage": ({"storage_path": "/proc/forbidden"}, "not writable"),
        "zero-shot": ({"train.data.zero_shot_validation": "/nonexistent/other"}, "has no corpus.jsonl"),
        "seeds": ({"search.seeds": 0}, "config.search.seeds=0: must be a positive integer"),
        "asha": ({"search.seeds": 2, "search.asha": True}, "config.search.asha=True: not with search.seeds=2"),
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for name, (overrides, message) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        proc = sweep(write_study(folder, assets, **overrides), env=env)
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 2 and message in output, (name, output[-2000:])
        assert output.count("error:") == 1, (name, output[-2000:])                 # one message, no traceback
        assert "Started a local Ray instance" not in output and "ray.init" not in output
    # a different space under an existing name is refused
    first = tmp_path / "space"
    first.mkdir()
    (first / "studies" / "tiny-study").mkdir(parents=True)
    (first / "studies" / "tiny-study" / "study_space.json").write_text(json.dumps({"space": {"num_experts": [0, 9]}}))
    proc = sweep(write_study(first, assets), env=env)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "exists" in output and "different search space" in output


def test_a_killed_study_with_seeds_resumes_without_retraining_finished_trials(tmp_path, assets):
    # Killed inside a configuration's replicates: the restored Repeater completes that group.
    config = write_study(tmp_path, assets, **{"train.optim.encoder_lr": 1e-4, "train.optim.epochs": 6,
                                               "search.num_trials": 2, "search.seeds": 2, "space.num_experts": [2, 3],
                                               "search.max_concurrent": 1})
    study_dir = tmp_path / "studies" / "tiny-study"
    proc = sweep(config)
    deadline = time.time() + 400
    killed = False
    while time.time() < deadline and proc.poll() is None:
        finished = list((study_dir / "runs").glob("*/results.json"))
        started = list((study_dir / "runs").glob("*/progress.jsonl"))
        if finished and len(started) > len(finished):
            time.sleep(1.0)                                 # the next trial is inside its epochs
            os.killpg(proc.pid, signal.SIGKILL)             # driver and the local Ray it started
            killed = True
            break
        time.sleep(0.2)
    proc.communicate(timeout=60)
    assert killed, "the study finished before it could be interrupted"
    finished_before = {p.parent.name: p.stat().st_mtime for p in (study_dir / "runs").glob("*/results.json")}
    starts_before = {p.parent.name: p.read_text().count("epoch_start") for p in (study_dir / "runs").glob("*/progress.jsonl")}

    resumed = sweep(config, "--resume")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-4000:]
    records = load_trials(study_dir)
    assert len(records) == 4 and [g.seeds for g in group_trials(records)] == [[0, 1], [0, 1]]
    for trial_id, mtime in finished_before.items():
        assert (study_dir / "runs" / trial_id / "results.json").stat().st_mtime == mtime
    for record in records:                                  # finished trials were not trained again
        progress = (study_dir / "runs" / record.trial_id / "progress.jsonl").read_text()
        if record.trial_id in finished_before:
            assert progress.count("epoch_start") == starts_before[record.trial_id]
    trials = [r for r in runs(tmp_path) if r.data.tags.get("sbmoe.kind") == "trial"]
    assert len(trials) == 4 and len({r.info.run_name for r in trials}) == 4
    assert all(r.info.status == "FINISHED" for r in runs(tmp_path))


def test_the_space_keeps_top_k_within_n_and_baselines_to_the_enqueued_trials():
    import optuna

    from sbmoe_ray.study.space import define_space
    from sbmoe_ray.stages.tune import baselines
    from sbmoe_ray.study.config import StudyConfig

    study = StudyConfig.from_dict({"space": {"base_model": ["a", "b"], "num_experts": [0, 3, 6], "top_k": [1, 2]}})
    sampler = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for point in baselines(study):
        sampler.enqueue_trial(point)
    trials = []
    for i in range(30):
        trial = sampler.ask()
        constants = define_space(trial, study.space)
        trials.append({**trial.params, **(constants or {})})
        sampler.tell(trial, float(i % 5))
    assert [t["base_model"] for t in trials if t["num_experts"] == 0] == ["a", "b"]      # only the enqueued
    assert all(1 <= t["top_k"] <= min(t["num_experts"], 2) for t in trials if t["num_experts"])
