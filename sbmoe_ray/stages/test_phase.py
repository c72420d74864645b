"""The end of stage 2: the configuration it chose, the baseline and the attribution controls of each base model,
tested on every test set.

A stage-2 trial trains and validates only: re-encoding a test corpus after fine-tuning is the dominant cost
on a CPU (SciFact ~90 s with native bf16), so only what stage 2 chose (by ``finetune.objective``, mean
over seeds) and each base model's plain fine-tuning are tested, from their best checkpoints, as Ray tasks,
as many at once as the cores hold their threads (two 2-thread encodings on 2 cores run 9 % slower than one
after the other: ``bench/oversubscription.py``). Then the large collections
(``data.large_test_datasets``, smallest first), encoded in shards by W tasks at a time. Each result is
added to its trial's record and written to its results file as it arrives, and its ranking to a TREC run
file (:func:`sbmoe_ray.study.layout.trec_run_file`): a tested trial is skipped on resume.
"""

from __future__ import annotations

import time
from pathlib import Path

from sbmoe_ray.analysis.records import ConfigGroup, TrialRecord, best_baseline, best_group, group_trials
from sbmoe_ray.data.beir import load_dataset
from sbmoe_ray.data.collections import expand_names, load_topics
from sbmoe_ray.evaluation.trec import write_trec
from sbmoe_ray.study.config import StudyConfig
from sbmoe_ray.study.layout import trec_run_file
from sbmoe_ray.study.space import label
from sbmoe_ray.train.config import TrainConfig
from sbmoe_ray.train.testing import evaluate_remote, evaluation_cpus, sharded_evaluation


def chosen_groups(records: list[TrialRecord], mode: str) -> dict[str, tuple[ConfigGroup | None, ConfigGroup | None]]:
    """Per base model: the SB-MoE configuration and the plain fine-tuning configuration chosen by the stage-2
    objective (each arm tuned, each chosen by validation)."""
    groups = group_trials(records)
    by_model = {m: [g for g in groups if g.base_model == m] for m in sorted({g.base_model for g in groups})}
    return {m: (best_group(mine, mode), best_baseline(mine, mode)) for m, mine in by_model.items()}


def tested_groups(records: list[TrialRecord], mode: str) -> list[ConfigGroup]:
    """What the test phase tests: per base model the chosen configuration, the baseline, and the attribution
    controls (:mod:`sbmoe_ray.stages.promotion`) that the chosen one is compared with."""
    picked = [g for pair in chosen_groups(records, mode).values() for g in pair if g is not None]
    return picked + [g for g in group_trials(records) if g.arm]


def test_phase(study: StudyConfig, records: list[TrialRecord], mode: str, cores: int | None = None) -> None:
    """Test the chosen configurations' and the baselines' replicates (``records``: stage 2's trials, updated
    in place), as many at once as ``cores`` hold their threads (all at once when None)."""
    import ray

    todo = [r for g in tested_groups(records, mode) for r in g.records]
    jobs = [(r, *evaluation_config(study, r)) for r in todo if not r.test]
    pending, started, total = {}, time.monotonic(), len(jobs)
    while jobs or pending:
        while jobs and (not pending or cores is None or evaluation_cpus(jobs[0][1]) * (len(pending) + 1) <= cores):
            record, cfg, folder = jobs.pop(0)
            tests = [load_dataset(name, cfg.data.test_split, cfg.data.data_dir) for name in cfg.data.test_datasets]
            pending[evaluate_remote(folder, cfg, tests)] = record
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        record = pending.pop(ref)
        add_results(record, ray.get(ref))
        _progress("test", total - len(jobs) - len(pending), total, record, started)
    large_test_phase(study, [r for r in todo if not r.params.get("arm")])    # the controls: test sets only


def large_test_phase(study: StudyConfig, todo: list[TrialRecord]) -> None:
    """The large collections, per collection (smallest first) and tested trial; done ones are skipped."""
    names = expand_names(study.train.data.large_test_datasets)
    jobs = [(n, r) for n in names for r in todo if n not in {t["dataset"] for t in r.test}]
    started = time.monotonic()
    for done, (name, record) in enumerate(jobs, 1):
        cfg, folder = evaluation_config(study, record)
        add_results(record, sharded_evaluation(cfg)(folder, [load_topics(name, None, cfg.data.data_dir)]))
        _progress(f"test {name}", done, len(jobs), record, started)


def evaluation_config(study: StudyConfig, record: TrialRecord) -> tuple[TrainConfig, Path | None]:
    """A tested trial's config (the study's test sets and evaluation settings) and its best checkpoint."""
    cfg = TrainConfig.from_dict({**record.config, "data": {**record.config["data"],
                                                           "test_datasets": study.train.data.test_datasets},
                                 "evaluation": study.train.to_dict()["evaluation"]})
    return cfg, Path(record.best_checkpoint) if record.best_checkpoint else None


def add_results(record: TrialRecord, results: list) -> None:
    """Add test results to a trial's record and write it to its results file; each ranking (where the
    evaluation kept one) to the trial's TREC run file for that test set."""
    for result in results:
        if getattr(result, "run", None) is not None:
            write_trec(result.run, trec_run_file(record.file, result.dataset), label(record.params, record.seed))
    record.test = record.test + [r.to_dict() for r in results]
    record.write()


def trec_files(records: list[TrialRecord]) -> dict[str, list[Path]]:
    """Per tested trial id, the TREC run files the test phase wrote (to attach to its MLflow run)."""
    files = {r.trial_id: [trec_run_file(r.file, t["dataset"]) for t in r.test] for r in records if r.test}
    return {k: [p for p in v if p.is_file()] for k, v in files.items()}


def _progress(what: str, done: int, total: int, record: TrialRecord, started: float) -> None:
    elapsed = time.monotonic() - started
    print(f"[{what}] {done}/{total} {label(record.params, record.seed)} tested in {elapsed / 60:.1f} min; "
          f"~{elapsed / done * (total - done) / 60:.1f} min left", flush=True)
