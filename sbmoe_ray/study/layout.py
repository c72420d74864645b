"""What a study leaves on disk, named in one place.

A study of name N under ``storage_path`` S lives in ``S/N``::

    study_config.json      the config it ran with (sbmoe report rebuilds the report from it)
    fingerprint.json       its identity: every setting and package version a resumed study must keep
    completed.json         written when every trial finished: a re-run answers "complete", touching nothing
    mlflow_runs.json       the MLflow run ids of the study (parent) and of its stages
    proxy/                 stage 1: tune/ (Ray Tune's experiment), runs/<trial id>/ (one run folder a trial),
                           optuna-journal.log (the search for optuna-dashboard),
                           finished/<configuration>-r<replicate> (the trial id whose results file holds it)
    finetune/              stage 2: the same, and promoted.json (what it fine-tunes), plan.json (the budget's plan)
    confirm/               stage 2's confirmation: its choice, baseline and controls trained again on fresh seeds
    report/                report.md, summary.json and its figures
    models/<base>-<role>/  the chosen configuration and the baseline as sentence-transformers folders
    trial_figures/         each trial's expert-load figure (logged to its MLflow run)

A trial's run folder is the training run's (:mod:`sbmoe_ray.train`: ``results.json``, ``progress.jsonl``,
checkpoints), and for a trial the test phase tested, ``trec/<test set>.trec``: its TREC run files. The
frozen-encoder embedding cache is shared by every study under ``S``
(``S/embedding_cache``, :attr:`sbmoe_ray.study.config.StudyConfig.cache_dir`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sbmoe_ray.train.config import RESULTS_FILE

# stage 1, stage 2 and its confirmation, by name: in code, folders, MLflow and the report
STAGES = ("proxy", "finetune", "confirm")


@dataclass(frozen=True)
class StageLayout:
    """One stage's folder: Ray Tune's experiment and the trials' run folders."""

    folder: Path

    @property
    def tune(self) -> Path:
        return self.folder / "tune"

    @property
    def runs(self) -> Path:
        return self.folder / "runs"

    @property
    def optuna_journal(self) -> Path:
        """The search's finished trials for ``optuna-dashboard <file>`` (:mod:`sbmoe_ray.tracking.optuna_journal`)."""
        return self.folder / "optuna-journal.log"

    def finished_file(self, group: str, replicate: int) -> Path:
        """Names the trial whose results file holds this (configuration, replicate): the source of truth on
        resume, whatever Ray Tune's experiment state remembers (a restored Tuner can re-run a finished
        trial, or its searcher suggest the same configuration again under a new trial id)."""
        return self.folder / "finished" / f"{group}-r{replicate}"

    def results_files(self) -> list[Path]:
        """Every finished trial's results file, by trial id."""
        return sorted(self.runs.glob(f"*/{RESULTS_FILE}"))


def trec_run_file(results_file: Path | str, dataset: str) -> Path:
    """A tested trial's TREC run file for one test set, in the trial's run folder beside its results file."""
    return Path(results_file).parent / "trec" / f"{Path(dataset).name}.trec"


@dataclass(frozen=True)
class StudyLayout:
    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / "study_config.json"

    @property
    def fingerprint_file(self) -> Path:
        return self.root / "fingerprint.json"

    @property
    def completed_file(self) -> Path:
        return self.root / "completed.json"

    @property
    def mlflow_runs_file(self) -> Path:
        return self.root / "mlflow_runs.json"

    @property
    def proxy(self) -> StageLayout:
        return StageLayout(self.root / "proxy")

    @property
    def finetune(self) -> StageLayout:
        return StageLayout(self.root / "finetune")

    @property
    def confirm(self) -> StageLayout:
        return StageLayout(self.root / "confirm")

    def stage(self, name: str) -> StageLayout:
        return {"proxy": self.proxy, "finetune": self.finetune, "confirm": self.confirm}[name]

    @property
    def promotions_file(self) -> Path:
        return self.finetune.folder / "promoted.json"

    @property
    def plan_file(self) -> Path:
        return self.finetune.folder / "plan.json"

    @property
    def confirm_plan_file(self) -> Path:
        return self.finetune.folder / "confirm_plan.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def report_file(self) -> Path:
        return self.report_dir / "report.md"

    @property
    def summary_file(self) -> Path:
        return self.report_dir / "summary.json"

    @property
    def trial_figures(self) -> Path:
        return self.root / "trial_figures"

    def model_folder(self, base_model: str, role: str) -> Path:
        """The sentence-transformers export of a base model's chosen configuration (``role`` "chosen") or
        of its baseline (``"baseline"``): what the study logs as an MLflow model and registers."""
        return self.root / "models" / f"{Path(base_model).name}-{role}"
