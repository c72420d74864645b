"""The two-stage main job end to end on tiny models, as the quick start runs it (stage 2's trials train in their
Tune trial's own process, one worker): early stopping, the attribution controls, confirmation on fresh seeds,
MLflow nesting, SIGKILL between the stages and inside a confirmation fine-tuning, then resume to the same answer.
Ray Train's workers are tested in a study by ``tests/runtime/test_multinode.py`` (a worker's node lost) and with
two workers by ``tests/train/test_train.py`` (the same weights as one, a killed worker resumed): a Ray Train run
pays for a controller and helper actors before it trains, and ten of them here cost more than the rest of this
test (docs/results/2026-12-06-where-the-cpu-goes.md)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import pytrec_eval
from mlflow.tracking import MlflowClient

from sbmoe_ray.analysis.records import group_key, group_trials, load_trials
from sbmoe_ray.evaluation.state_cache import builds
from sbmoe_ray.study.layout import StudyLayout, trec_run_file
from sbmoe_ray.tracking.optuna_journal import KEY, journal_study
from sbmoe_ray.train.session import read_progress

from helpers import finish, held_in_epoch, printed, sweep, synthetic_dataset, trec_qrels, write_study
from test_study import assets  # noqa: F401 (the module fixture)

pytestmark = [pytest.mark.slow]


# What Tune logs, with a traceback, when it restores a Tuner killed before its first experiment state (a kill just
# after the promotions are written): the study makes a new Tuner then (sbmoe_ray.stages.grid.restorable).
RESTORE_ERROR = "Failed to restore the run state"


def _wait(proc, condition, timeout: float = 500) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_a_two_stage_study_killed_between_and_inside_the_stages_resumes_to_the_same_answer(tmp_path, assets):
    large = synthetic_dataset(tmp_path / "large", 30)      # a "large" collection: tested in shards, at the end
    config = write_study(tmp_path, assets, **{
        "promote": 1, "proxy.num_trials": 5, "proxy.max_concurrent": 1, "space.num_experts": [0, 2, 3],
        "train.data.large_test_datasets": [str(large)],
        "train.evaluation": {"shard_rows": 25, "encode_workers": 2},
        "finetune": {"controls": 1, "seeds": 1, "confirm_seeds": 1, "encoder_lr": 1e-4, "epochs": 3, "patience": 1,
                     "trained_layers": 1,                           # the depth ladder: the top layer of 2
                     "warmup_steps": 2,
                     "schedule": "linear", "num_workers": 1, "max_concurrent": 2,
                     "cpus_per_worker": 0.5, "validation_retrieval_docs": 20}})
    study_dir = tmp_path / "studies" / "tiny-study"
    stage2_dir = study_dir / "finetune"
    promoted_file = stage2_dir / "promoted.json"

    # 1. killed between the stages: as soon as stage 2's promotions are written
    proc = sweep(config)
    assert _wait(proc, promoted_file.is_file), printed(proc)[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    promoted = json.loads(promoted_file.read_text())
    stage1_mtimes = {p: p.stat().st_mtime for p in (study_dir / "proxy" / "runs").glob("*/results.json")}

    # 2. killed inside a confirmation fine-tuning: its run held at the start of its second epoch, the first one
    # checkpointed (tests/helpers.py, HELD_EPOCH_SITE); it resumes like any stage-2 trial, from that checkpoint
    holding = tmp_path / "held-in-confirmation"
    proc = sweep(config, env=held_in_epoch(tmp_path / "site", study_dir / "confirm", 1, holding))
    assert _wait(proc, holding.exists, 1200), printed(proc)[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert RESTORE_ERROR not in printed(proc), printed(proc)[-3000:]

    # 3. resumed to the end
    proc = sweep(config)
    output = finish(proc, 900)
    assert proc.returncode == 0 and RESTORE_ERROR not in output, output[-4000:]
    assert json.loads(promoted_file.read_text()) == promoted                     # promoted once, kept
    assert {p: p.stat().st_mtime for p in (study_dir / "proxy" / "runs").glob("*/results.json")} == stage1_mtimes

    # The held confirmation run went on from its checkpoint in a new process: its first epoch ran once. (A run
    # beside it, max_concurrent 2, killed inside its epoch 0 starts again from scratch: [0, 0, 1].)
    starts = [[(e["epoch"], e["pid"]) for e in read_progress(p.parent) if e["event"] == "epoch_start"]
              for p in (study_dir / "confirm" / "runs").glob("*/progress.jsonl")]
    assert any([epoch for epoch, _ in run][:3] == [0, 1, 1] and run[0][1] == run[1][1] != run[2][1]
               for run in starts), starts

    # optuna-dashboard's journal: each stage-1 configuration once, after a SIGKILL and two resumes.
    journal = journal_study(StudyLayout(study_dir).proxy.optuna_journal, "tiny-study-proxy", ["minimize"]).trials
    keys = [t.user_attrs[KEY] for t in journal]
    assert len(keys) == len(set(keys)) == len(group_trials(load_trials(StudyLayout(study_dir).proxy)))
    # The promoted set is the top of stage 1 (mean validation loss over its seeds).
    stage1 = [g for g in group_trials(load_trials(StudyLayout(study_dir).proxy)) if not g.is_baseline]
    top = [g.key for g in sorted(stage1, key=lambda g: g.objective)[:1]]
    assert [e["stage1_group"] for e in promoted["entries"] if e["role"] == "promoted"] == top
    # Stage 2: every (configuration, seed) trained exactly once, in its trial's own process.
    stage2 = load_trials(StudyLayout(study_dir).finetune)
    confirmed = load_trials(StudyLayout(study_dir).confirm)
    roles = [e["role"] for e in promoted["entries"]]      # a drawn control that is the top is promoted instead
    # plain fine-tuning tuned as much as SB-MoE: promote + controls = 2 encoder learning rates (1e-4 first)
    assert roles.count("promoted") == 1 and roles.count("control") <= 1 and roles.count("baseline") == 2
    plain = [e["params"] for e in promoted["entries"] if e["role"] == "baseline"]
    assert [p["encoder_lr"] for p in plain] == [1e-4, 3.16e-4]
    # selection trains every entry but the attribution controls: they are built from the choice at confirmation
    selected = [e for e in promoted["entries"] if e["role"] not in ("dense adapter", "random routing")]
    assert len(stage2) == len(selected)
    assert sorted(group_key(e["params"]) for e in selected) == sorted({r.group for r in stage2})
    assert all(r.route == "cached_layers" for r in stage2 + confirmed)     # every arm at the study's depth
    built = builds(tmp_path / "studies" / "embedding_cache")
    assert built and len({b["key"] for b in built}) == len(built)   # each text list encoded once, for every trial
    assert all(json.loads(open(r.file).read())["config"]["scaling"]["num_workers"] == 1 for r in stage2)
    # ... and one trial actor serves the next (reuse_actors): fewer processes than fine-tunings
    pids = {e["pid"] for r in stage2 for e in read_progress(os.path.dirname(r.file)) if e["event"] == "epoch_start"}
    assert len(pids) < len(stage2), (pids, len(stage2))
    # Confirmation: the chosen configuration, the baseline and both controls trained again on a fresh seed,
    # disjoint from the selection seed; only those are tested.
    assert not any(r.test for r in stage2) and all(r.test for r in confirmed)
    assert sorted(r.seed for r in confirmed) == [1000] * 4
    assert not {r.seed for r in confirmed} & {r.seed for r in stage2}
    tested = {r.group for r in confirmed}
    arms = {r.params["arm"]: r for r in confirmed if r.params.get("arm")}
    # of the tuned baselines, the one with the better mean validation loss in stage 2 (only it is confirmed)
    plain_groups = {g.key: g.objective for g in group_trials(stage2) if g.is_baseline}
    assert len(tested) == 4 and tested & set(plain_groups) == {min(plain_groups, key=plain_groups.get)}
    assert {r.group for r in arms.values()} < tested and set(arms) == {"dense_adapter", "random_routing"}
    configs = {r.group: json.loads(open(r.file).read())["config"]["model"] for r in confirmed}
    assert configs[arms["dense_adapter"].group]["num_experts"] == 1
    assert configs[arms["random_routing"].group]["routing"] == "random"
    # the controls are built from the configuration stage 2 chose (its head, its learning rates)
    chosen_params = next(r.params for r in confirmed if r.group not in plain_groups and not r.params.get("arm"))
    assert {k: v for k, v in arms["random_routing"].params.items() if k != "arm"} == chosen_params
    # Early stopping: every run ended on its patience or at the cap of 3 epochs, its steps counted.
    for record in stage2 + confirmed:
        assert len(record.history) == 3 or record.history[-1]["stopped_early"] == 1.0
        assert [row["steps_done"] for row in record.history] == [
            (i + 1) * record.history[0]["steps_done"] for i in range(len(record.history))]
    # Only the tested trials reach the large collection, each once, encoded in shards and searched exactly.
    for record in confirmed:
        if record.params.get("arm"):                                  # the controls: the test sets only
            assert [t["dataset"] for t in record.test] == ["data"]
            continue
        (result,) = [t for t in record.test if t["dataset"] == "large"]
        assert result["search"]["index"] == "exact (sharded)" and result["search"]["shards"] > 1
        assert [t["dataset"] for t in record.test] == ["data", "large"]
    # Each tested trial's TREC run file, scored by pytrec_eval's own parsers, gives its recorded nDCG@10.
    qrels = pytrec_eval.parse_qrel(trec_qrels(assets["data"] / "qrels" / "test.tsv"))
    for record in confirmed:
        trec = trec_run_file(record.file, "data")
        run = pytrec_eval.parse_run(open(trec))
        scored = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
        recorded = next(t for t in record.test if t["dataset"] == "data")["metrics"]["ndcg@10"]
        assert sum(v["ndcg_cut_10"] for v in scored.values()) / len(scored) == pytest.approx(recorded, abs=1e-4)
        assert not trec_run_file(record.file, "large").exists()               # sharded: no ranking kept

    summary = json.loads((study_dir / "report" / "summary.json").read_text())["finetune"]
    assert summary["test"]["budget"]["baseline_encoder_lrs"] == [1e-4, 3.16e-4]
    (agreement,) = summary["agreement"].values()
    assert agreement["configurations"] == len(promoted["entries"]) - 4          # not the baselines, not the arms
    assert len(promoted["entries"]) - 4 < 3 or -1 <= agreement["kendall_tau"] <= 1
    report = (study_dir / "report" / "report.md").read_text()
    assert "Stage 2" in report and "Attribution" in report and "learning_curves.png" in report
    assert "**Fine-tuned: top 1 of 2 layers**" in report
    assert json.loads((study_dir / "report" / "summary.json").read_text())["regime"]["finetune_trained_layers"] == 1
    assert "plain fine-tuning at 2 encoder learning rates (0.0001, 0.000316: tuned as much as SB-MoE" in report
    assert "Primary claim" in report and summary["test"]["primary"][0]["collections"] == ["large"]   # not in-domain
    (answer,) = summary["test"]["per_base_model"]
    assert set(answer["datasets"]) == {"data", "large"} and answer["chosen"]["seeds"] == [1000]
    assert summary["training_seeds"] == {"selection": [0], "confirmation": [1000], "train_fraction": 0.9}
    assert answer["chosen"]["group"] not in {r.group for r in arms.values()}
    (attribution,) = summary["test"]["attribution"].values()
    assert sorted((r["against"], r["dataset"]) for r in attribution["rows"]) == [
        ("dense_adapter", "data"), ("random_routing", "data")]
    assert all(r["family"] == "attribution" and r["group"] == answer["chosen"]["group"] for r in attribution["rows"])
    assert set(attribution["credit"]) == {"data", "large"}

    # MLflow: parent -> one run per stage -> trial runs; stage-2 runs name the stage-1 run they came from.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny-study")
    runs = client.search_runs([experiment.experiment_id], max_results=200)
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    (parent,) = [r for r in runs if r.data.tags.get("sbmoe.kind") == "study"]
    stages = {r.data.tags["sbmoe.stage"]: r for r in runs if r.data.tags.get("sbmoe.kind") == "stage"}
    assert set(stages) == {"proxy", "finetune", "confirm"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in stages.values())
    trials = [r for r in runs if r.data.tags.get("sbmoe.kind") == "trial"]
    assert len(trials) == len(stage1_mtimes) + len(stage2) + len(confirmed)      # no duplicate after resumes
    by_trial_id = {r.data.tags["sbmoe.trial_id"]: r for r in trials}
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == stages[run.data.tags["sbmoe.stage"]].info.run_id
        if run.data.tags.get("sbmoe.role") in ("promoted", "control"):
            source = by_trial_id[run.data.tags["sbmoe.promoted_from_trial"]]
            assert run.data.tags["sbmoe.promoted_from"] == source.info.run_id
            assert source.data.tags["sbmoe.group"] == run.data.tags["sbmoe.group"]
    assert agreement["configurations"] < 2 or any(k.endswith("kendall_tau") for k in parent.data.metrics)
    # What the MLflow UI shows: the training view, the report as a page, datasets and source on every trial,
    # the tested trials' run files, system metrics on the stage runs.
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "report/report.html" in [f.path for f in client.list_artifacts(parent.info.run_id, "report")]
    for run in trials:
        assert run.data.tags["mlflow.source.name"] == "sbmoe" and len(run.inputs.dataset_inputs) == 3
        if run.data.tags["sbmoe.trial_id"] in {r.trial_id for r in confirmed}:
            assert "data.trec" in [f.path for f in client.list_artifacts(run.info.run_id)]
    assert all(any(m.startswith("system/") for m in r.data.metrics) for r in stages.values())
