"""The end of a study: its answer's models leave the toolkit. Per base model, the configuration the final
stage chose and its baseline (their first replicates) are exported as sentence-transformers folders
(``<study>/models/<base>-<role>``, :mod:`sbmoe_ray.export`), logged as MLflow models on their trials' runs and
registered (``<study>-<base>``, aliases ``champion`` and ``baseline``: :mod:`sbmoe_ray.tracking.models`).
A resumed study skips what is registered already."""

from __future__ import annotations

from sbmoe_ray.analysis.result import StageResult
from sbmoe_ray.evaluation.metrics import final_metrics
from sbmoe_ray.study.config import StudyConfig
from sbmoe_ray.tracking import StudyTracker


def _registered(tracking_uri: str, name: str, alias: str, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(tracking_uri).get_model_version_by_alias(name, alias).run_id == run_id
    except MlflowException:
        return False


def publish_models(study: StudyConfig, tracker: StudyTracker, result: StageResult) -> dict[str, str]:
    """Export, log and register each base model's chosen model and baseline; ``{"<base> <role>": version}``."""
    from sbmoe_ray.export.card import model_card
    from sbmoe_ray.export.sentence_transformer import export_folder
    from sbmoe_ray.export.source import from_record, pick
    from sbmoe_ray.model.backbones import load_tokenizer
    from sbmoe_ray.tracking.models import ALIASES, log_retriever, registered_name

    runs, versions = tracker.all_trial_runs(), {}
    for answer in result.summary.per_base_model:
        name = registered_name(study.name, answer.base_model)
        for role in ("chosen", "baseline"):
            record = pick(answer, [*result.records, *getattr(result, "confirmed", [])], baseline=role == "baseline")
            if record is None or record.trial_id not in runs:
                continue
            if _registered(study.tracking_uri, name, ALIASES[role], runs[record.trial_id]):
                continue
            found = from_record(record)
            found.facts.update({"study": study.name, "stage": result.name, "role": role, "answer": answer})
            folder = study.layout.model_folder(answer.base_model, role)
            export_folder(found.model, found.config, load_tokenizer(found.config.base_model), folder,
                          model_card(found.facts, found.config, f"models:/{name}@{ALIASES[role]}"))
            versions[f"{answer.base_model} {role}"], _ = log_retriever(
                study.tracking_uri, runs[record.trial_id], folder, name, role, final_metrics(record.test))
            print(f"[models] {name}@{ALIASES[role]}: {folder}", flush=True)
    return versions
