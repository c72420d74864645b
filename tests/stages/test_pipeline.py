"""The main job in this process, stage 1 only, on a tiny model: `sbmoe study` runs from its checks to its report
and its MLflow runs (the fast lane's end-to-end check; the slow lane kills and resumes whole studies)."""

from __future__ import annotations

import json

import pytest
import ray
from mlflow.tracking import MlflowClient

from sbmoe_ray.cli import main
from sbmoe_ray.study.layout import StudyLayout

from helpers import runs, save_tiny_model, synthetic_dataset, write_study


@pytest.fixture
def assets(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("pipeline")
    return {"model": save_tiny_model(root / "model", tokenizer), "data": synthetic_dataset(root / "data", 48)}


def test_sbmoe_study_runs_stage_one_to_its_report_and_mlflow_runs(tmp_path, assets, capsys):
    config = write_study(tmp_path, assets, **{"proxy.num_trials": 3, "proxy.max_concurrent": 1,
                                               "train.optim.epochs": 1})
    try:
        assert main(["study", "--config", str(config)]) == 0
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    layout = StudyLayout(tmp_path / "studies" / "tiny-study")
    assert "[proxy] 3/3 trials done" in out and str(layout.report_file) in out
    assert len(layout.proxy.results_files()) == 3 and layout.fingerprint_file.is_file()
    summary = json.loads(layout.summary_file.read_text())
    assert summary["budget"]["trials"] == 3 and summary["per_base_model"][0]["base_model"] == str(assets["model"])
    found = runs(tmp_path)
    assert len(found) == 1 + 1 + 3 and all(r.info.status == "FINISHED" for r in found)
    (parent,) = [r for r in found if r.data.tags["sbmoe.kind"] == "study"]
    dataset = str(assets["data"])
    assert len(parent.data.params[f"dataset.{dataset}.sha256"]) == 16 and "version.ray" in parent.data.params
    # Artifacts beside the store (the report is on the parent run), not in the working directory's ./mlruns.
    assert parent.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    assert list((tmp_path / "mlartifacts").rglob("report.md"))
    # The answer's models: registered with aliases on their trials' runs, and exported for sentence-transformers.
    client, name = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), f"tiny-study-{assets['model'].name}"
    answer = summary["per_base_model"][0]
    trial_runs = {r.data.tags["sbmoe.trial_id"]: r.info.run_id for r in found if "sbmoe.trial_id" in r.data.tags}
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.run_id == trial_runs[answer["chosen"]["trial_ids"][0]]
    assert client.get_model_version_by_alias(name, "baseline").run_id != champion.run_id
    exported = main(["export", str(layout.root), "--out", str(tmp_path / "exported")])
    card = (tmp_path / "exported" / "README.md").read_text()
    assert exported == 0 and "tiny-study" in card and answer["chosen"]["config"] in card
    # the card's answer is the report's first screen: the same sentence
    sentence = next((line for line in card.splitlines() if line.startswith("On ")), None)
    assert (sentence is not None) == bool(summary.get("primary"))
    assert sentence is None or sentence in layout.report_file.read_text()
    assert (layout.model_folder(answer["base_model"], "chosen") / "modules.json").is_file()

    # The finished study run again: with another setting it is refused, listing the change; as it was, it is
    # complete. Either way its files and MLflow store stay byte for byte as they were.
    def snapshot():
        return {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file() and p.name != "study.yaml"}

    before = snapshot()
    capsys.readouterr()
    assert main(["study", "--config", str(config), "--set", "train.optim.epochs=4"]) == 2
    assert "train.optim.epochs: 1 -> 4" in capsys.readouterr().err
    assert main(["study", "--config", str(config)]) == 0
    assert "is complete" in capsys.readouterr().out and not ray.is_initialized()
    assert snapshot() == before
