"""What an MLflow user sees, read back from a real (temporary SQLite) store: the experiment in the
model-training view, source tags on every run, the datasets as inputs with their context on the parent and
on each trial, system metrics on a stage run that go on after a resume, and the report as an HTML page
with its figure inside."""

from __future__ import annotations

import base64
import time

import matplotlib
import pytest
from mlflow.tracking import MlflowClient

from sbmoe_ray.data.provenance import dataset_uses
from sbmoe_ray.study.points import TrialPoint
from sbmoe_ray.tracking import StudyTracker
from sbmoe_ray.tracking.views import EXPERIMENT_KIND, report_html
from sbmoe_ray.train.config import DataConfig

from helpers import write_beir

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    corpus = [{"_id": f"d{i}", "title": "", "text": f"document {i}"} for i in range(6)]
    queries = [{"_id": f"q{i}", "text": f"question {i}"} for i in range(4)]
    return write_beir(root / "tiny", corpus, queries, {"train": [("q0", "d0", 1), ("q1", "d1", 1)],
                                                       "test": [("q2", "d2", 1), ("q3", "d3", 1)]})


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, tiny_data):
    tmp_path = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = DataConfig(train_dataset=str(tiny_data), test_datasets=[str(tiny_data)], test_split="test")
    tracker = StudyTracker(uri, "views", tmp_path / "runs.json")
    tracker.system_metrics_interval = 0.5
    tracker.start_study({"name": "views"}, dataset_uses(data))
    stage = tracker.for_stage("proxy", "stage 1")
    trial = stage.trial_run("t1", TrialPoint({"base_model": "m", "num_experts": 3}, 0))
    time.sleep(2.5)
    stage.finish_stage()
    return MlflowClient(uri), tracker, stage, trial, tmp_path


def test_the_experiment_is_in_the_training_view_and_every_run_names_its_source(tracked):
    client, tracker, stage, trial, _ = tracked
    experiment = client.get_experiment_by_name("views")
    assert experiment.tags["mlflow.experimentKind"] == EXPERIMENT_KIND == "custom_model_development"
    for run_id in (tracker.runs["parent"], tracker.runs["stages"]["proxy"], trial):
        tags = client.get_run(run_id).data.tags
        assert tags["mlflow.source.name"] == "sbmoe" and tags["mlflow.source.type"] == "LOCAL"
        assert len(tags.get("mlflow.source.git.commit", "x" * 40)) == 40


def test_datasets_are_inputs_with_their_context_on_the_parent_and_each_trial(tracked, tiny_data):
    client, tracker, _, trial, _ = tracked
    for run_id in (tracker.runs["parent"], trial):
        inputs = client.get_run(run_id).inputs.dataset_inputs
        contexts = sorted(next(t.value for t in i.tags if t.key == "mlflow.data.context") for i in inputs)
        assert contexts == ["test", "train", "validation"]
        by_context = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset for i in inputs}
        assert by_context["train"].digest == by_context["validation"].digest != by_context["test"].digest
        assert by_context["test"].name == f"{tiny_data.name}/test" and str(tiny_data) in by_context["test"].source


def test_a_stage_run_records_system_metrics_and_a_resumed_stage_continues_their_steps(tracked):
    client, tracker, _, _, _ = tracked
    run_id = tracker.runs["stages"]["proxy"]
    names = [m for m in client.get_run(run_id).data.metrics if m.startswith("system/")]
    assert any("cpu_utilization" in m for m in names) and any("memory" in m for m in names)
    metric = next(m for m in names if "cpu_utilization" in m)
    first = max(m.step for m in client.get_metric_history(run_id, metric))
    again = tracker.for_stage("proxy", "stage 1")
    time.sleep(2.0)
    again.finish_stage()
    steps = [m.step for m in client.get_metric_history(run_id, metric)]
    assert max(steps) > first and len(steps) == len(set(steps))           # continued, no step written twice


def test_the_html_report_embeds_its_figures(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    fig.savefig(tmp_path / "heatmap.png")
    (tmp_path / "report.md").write_text("# Study\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![heat](heatmap.png)\n")
    html = report_html(tmp_path / "report.md")
    assert "<table>" in html and "heatmap.png" not in html
    assert base64.b64encode((tmp_path / "heatmap.png").read_bytes()).decode()[:200] in html
