"""What an MLflow user sees of a study, beyond params and metrics: the experiment in MLflow's model-training
view, the source (git commit, entry point) on every run, the datasets as MLflow dataset inputs, system
metrics on the stage runs, and the report as one self-contained HTML page.

* MLflow 3 chooses an experiment's view from its tag ``mlflow.experimentKind``; untagged, the UI may infer
  the GenAI view (Traces, Judges, Prompts). ``custom_model_development`` is the model-training view (the
  values are those of the MLflow UI's own enum, 3.17).
* Runs created through ``MlflowClient.create_run`` get no ``mlflow.source.*`` tags (``mlflow.start_run``
  adds them from the calling script); the Source column stays empty unless they are set here.
* Datasets as inputs (``mlflow.entities.DatasetInput``): name, digest (the files' sha256 of
  :mod:`sbmoe_ray.data.provenance`), source, and a context tag (``train``, ``validation``, ``test``), shown in
  the Dataset column and on each run's page. The held-out validation split is part of the training
  dataset's file, so it is a second input with the same digest.
* System metrics: :mod:`sbmoe_ray.tracking.system_metrics` (every node of a cluster).
* MLflow renders a markdown artifact's relative image links as text; an HTML artifact with the figures
  embedded (base64) shows as a page with its pictures.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from pathlib import Path
from typing import Any

EXPERIMENT_KIND = "custom_model_development"
ENTRY_POINT = "sbmoe"


@functools.cache
def source_tags() -> dict[str, str]:
    """MLflow's source tags for a run this process creates (the commit of the checkout, if it is one)."""
    from sbmoe_ray.runtime.environment import git_commit

    tags = {"mlflow.source.name": ENTRY_POINT, "mlflow.source.type": "LOCAL"}
    commit = git_commit()
    if commit and commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    return tags


def dataset_inputs(records: list[dict[str, str]]) -> list:
    """``DatasetInput`` entities of :func:`sbmoe_ray.data.provenance.dataset_uses` records."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    return [DatasetInput(Dataset(r["name"], r["digest"], "local", json.dumps({"uri": r["source"]}),
                                 profile=json.dumps({"split": r["split"]})),
                         [InputTag("mlflow.data.context", r["context"])]) for r in records]


def report_html(report_file: Path) -> str:
    """The markdown report as one HTML page, its PNGs embedded (what MLflow's artifact view renders)."""
    import markdown

    folder = report_file.parent

    def embed(match: re.Match) -> str:
        path = folder / match.group(2)
        if not path.is_file():
            return match.group(0)
        return f'{match.group(1)}"data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"'

    body = markdown.markdown(report_file.read_text(), extensions=["tables"])
    body = re.sub(r'(<img[^>]*src=)"([^":]+\.png)"', embed, body)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>sbmoe report</title><style>"
            "body{font-family:sans-serif;max-width:1200px;margin:auto;font-size:14px}"
            "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
            f"img{{max-width:100%}}</style></head><body>{body}</body></html>")


def tags_of(extra: dict[str, Any]) -> dict[str, str]:
    """A new run's tags: ``extra`` and the source tags."""
    return {**source_tags(), **extra}
