"""Which trained model to export, from what a user has at hand: a checkpoint folder, a trial's run folder, or
a study folder and a base model (the configuration the study's answer chose, or its baseline; the first of
its replicates). What the model card says comes with it (:mod:`sbmoe_ray.export.card`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sbmoe_ray.analysis.records import TrialRecord
from sbmoe_ray.analysis.summary import Answer, StageSummary
from sbmoe_ray.errors import ConfigError
from sbmoe_ray.model.bi_encoder import MODEL_CONFIG_FILE, BiEncoder, build_bi_encoder, load_model
from sbmoe_ray.model.config import ModelConfig
from sbmoe_ray.study.layout import StudyLayout
from sbmoe_ray.train.config import RESULTS_FILE


@dataclass
class Exportable:
    model: BiEncoder
    config: ModelConfig
    facts: dict[str, Any] = field(default_factory=dict)   # what the card states: study, configuration, metrics


def from_checkpoint(folder: Path) -> Exportable:
    model, config = load_model(folder)
    return Exportable(model, config.resolved(), {"checkpoint": str(folder)})


def from_record(record: TrialRecord) -> Exportable:
    """A trial's best checkpoint (or, for the zero-shot baseline, the base model as it is)."""
    if record.best_checkpoint:
        found = from_checkpoint(Path(record.best_checkpoint))
    else:
        config = ModelConfig(**record.config["model"]).resolved()
        found = Exportable(build_bi_encoder(config, frozen_encoder=True), config, {})
    found.facts.update({"params": record.params, "seed": record.seed, "trial_id": record.trial_id,
                        "route": record.route, "trained_layers": record.config.get("optim", {}).get("trained_layers"),
                        "train_dataset": record.config.get("data", {}).get("train_dataset"),
                        "test": {t["dataset"]: t["metrics"] for t in record.test}})
    return found


def pick(answer: Answer, records: list[TrialRecord], baseline: bool = False) -> TrialRecord | None:
    """The first replicate (lowest seed) of an answer's chosen configuration, or of its tested baseline."""
    if baseline:
        mine = [r for r in records if r.test and r.params.get("num_experts") == 0
                and r.params.get("base_model") == answer.base_model]
    else:
        mine = [r for r in records if r.trial_id in set(answer.chosen.trial_ids)]
    return min(mine, key=lambda r: r.seed) if mine else None


def _answer(summary: StageSummary, base_model: str | None, where: Path) -> Answer:
    """The answer for ``base_model``."""
    names = [a.base_model for a in summary.per_base_model]
    matches = [a for a in summary.per_base_model if base_model in (None, a.base_model, Path(a.base_model).name)]
    if len(matches) != 1:
        raise ConfigError(f"--base-model={base_model!r}: the study {where} answers for {names}; name one of them")
    return matches[0]


def from_study(folder: Path, base_model: str | None, baseline: bool = False) -> Exportable:
    """The configuration a study chose for ``base_model`` (or its baseline), with the answer's numbers."""
    layout = StudyLayout(folder)
    if not layout.summary_file.is_file():
        raise ConfigError(f"{folder}: the study has no answer yet ({layout.summary_file} is missing); run it to "
                          "its report first")
    stage, summary = StageSummary.final(json.loads(layout.summary_file.read_text()))
    answer = _answer(summary, base_model, folder)
    files = layout.stage(stage).results_files() + (layout.confirm.results_files() if stage == "finetune" else [])
    records = {r.trial_id: r for r in map(TrialRecord.read, files) if r}
    record = pick(answer, list(records.values()), baseline)
    if record is None:
        raise ConfigError(f"{folder}: no tested {'baseline' if baseline else 'chosen'} trial of {answer.base_model}")
    found = from_record(record)
    found.facts.update({"study": folder.name, "stage": stage, "role": "baseline" if baseline else "chosen",
                        "answer": answer, "claim": summary.claim(answer.base_model)})
    return found


def resolve(source: Path, base_model: str | None = None, baseline: bool = False) -> Exportable:
    """A checkpoint folder, a trial's run folder, or a study folder (then ``base_model`` picks the answer)."""
    source = Path(source)
    if (source / MODEL_CONFIG_FILE).is_file():
        return from_checkpoint(source)
    if (source / RESULTS_FILE).is_file():
        record = TrialRecord.read(source / RESULTS_FILE)
        if record is not None:
            return from_record(record)
    if StudyLayout(source).config_file.is_file():
        return from_study(source, base_model, baseline)
    raise ConfigError(f"export source {str(source)!r}: neither a checkpoint folder ({MODEL_CONFIG_FILE}), a trial's "
                      f"run folder ({RESULTS_FILE}) nor a study folder (study_config.json)")
