"""The main job as a two-fidelity study: the proxy searches, fine-tuning checks the best and some others.

Stage 1 (the proxy) is the frozen-encoder study of :mod:`sbmoe_ray.stages.tune`: TPE over the space, the
baselines first, seconds a trial. Stage 2 fine-tunes, per base model, the configurations
:mod:`sbmoe_ray.stages.promotion` picks (the top ``promote`` by the stage-1 objective, ``finetune.controls``
random others, the plain fine-tuning baseline), each with its encoder on ``finetune.num_workers`` Ray Train
workers and replicated over ``finetune.seeds``. A stage-2 trial trains and validates only: re-encoding a
test corpus after fine-tuning is the dominant cost on a CPU (SciFact ~90 s with native bf16), so only the
configuration stage 2 chooses (by ``finetune.objective``, mean over seeds) and the baseline of each base
model are tested, on every test set, from their best checkpoints (the test phase). Then the proxy is
checked: Kendall's τ and Spearman's ρ of the two stages' objectives over the promoted and control
configurations.

Head learning rate in stage 2: the promoted configuration's own ``moe_lr`` (the encoder's is
``finetune.encoder_lr``, 50-500x lower): the head's optimum on frozen features is the best estimate we
have, and searching a multiplier would multiply stage 2's cost by the grid's size.

Every step resumes: the Tuners restore, the promotions are read back from ``promoted.json``, a tested
trial keeps its test results in its results file. ``promote = 0`` is the proxy-only study.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ray import tune

from sbmoe_ray.data.collections import expand_names, load_topics
from sbmoe_ray.data.beir import load_dataset
from sbmoe_ray.stages.promotion import load_or_promote, promotions
from sbmoe_ray.analysis.records import (POINT_KEY, REPLICATE_KEY, RESULTS_FILE, ConfigGroup, baselines, best_group, group_trials,
                               load_trials)
from sbmoe_ray.study.space import label
from sbmoe_ray.stages.tune import trainable
from sbmoe_ray.study.config import StudyConfig
from sbmoe_ray.train.testing import evaluate_remote, evaluation_cpus, sharded_evaluation


class ProgressCallback(tune.Callback):
    """One line per finished trial: how many are done, and an estimate of the time the stage has left."""

    def __init__(self, stage: str, total: int) -> None:
        self.stage, self.total, self.done, self.started = stage, total, 0, time.monotonic()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        # This trial is not yet TERMINATED when Tune calls back; trials finished before a resume are.
        self.done = max(self.done + 1, sum(t.status == "TERMINATED" for t in trials) + 1)
        elapsed = time.monotonic() - self.started
        left = elapsed / max(self.done, 1) * (self.total - self.done)
        print(f"[{self.stage}] {self.done}/{self.total} trials done in {elapsed / 60:.1f} min; "
              f"~{left / 60:.1f} min left", flush=True)


def stage2_points(entries: list[dict[str, Any]], seeds: int) -> list[dict[str, Any]]:
    """One Tune config per (configuration, replicate): the parameters, the replicate, and where the
    configuration came from (for the MLflow tags)."""
    return [{POINT_KEY: entry["params"], REPLICATE_KEY: r, "role": entry["role"],
             "stage1_trials": entry["stage1_trials"]} for entry in entries for r in range(seeds)]


def finetune_tuner(stage2: StudyConfig, points: list[dict[str, Any]], callbacks: list) -> tune.Tuner:
    """Stage 2's Tuner: a grid over the promoted points (restored when interrupted)."""
    path, space = stage2.study_dir / "tune", {"point": tune.grid_search(points)}
    if tune.Tuner.can_restore(str(path)):
        # The space again: a Tuner killed before its first trial restores without one (one empty trial).
        return tune.Tuner.restore(str(path), trainable=trainable(stage2), param_space=space, resume_errored=True)
    stage2.study_dir.mkdir(parents=True, exist_ok=True)
    return tune.Tuner(
        trainable(stage2), param_space=space,
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=stage2.search.max_concurrent),
        run_config=tune.RunConfig(name="tune", storage_path=str(stage2.study_dir), callbacks=callbacks,
                                  failure_config=tune.FailureConfig(max_failures=1)))


def promote(study: StudyConfig) -> list[dict[str, Any]]:
    """The stage-2 configurations, computed once from stage 1's finished trials."""
    stage2 = study.finetune_study()
    settings = {"promote": study.promote, "controls": study.finetune.controls, "seed": study.search.seed,
                "seeds": study.finetune.replicates()[0]}
    return load_or_promote(stage2.study_dir, settings, lambda: promotions(
        group_trials(load_trials(study.study_dir)), study.mode, study.promote, study.finetune.controls,
        study.search.seed))


def chosen_groups(stage2: StudyConfig) -> dict[str, tuple[ConfigGroup | None, ConfigGroup | None]]:
    """Per base model: the stage-2 configuration chosen by the stage-2 objective, and the baseline."""
    groups = group_trials(load_trials(stage2.study_dir))
    paired = baselines(groups)
    return {m: (best_group([g for g in groups if g.base_model == m], stage2.mode), paired.get(m))
            for m in sorted({g.base_model for g in groups})}


def test_phase(study: StudyConfig, stage2: StudyConfig, cores: int | None = None) -> None:
    """Test each chosen configuration's and each baseline's replicates on every test set, from their best
    checkpoints, as Ray tasks, as many at once as ``cores`` hold their threads (all at once when None): two
    2-thread encodings on 2 cores run 9 % slower than one after the other (``bench/oversubscription.py``).
    Each result goes into its trial's results file as it arrives (a tested trial is skipped on resume).
    Then the large collections (``data.large_test_datasets``, smallest first), encoded in shards by W tasks
    at a time."""
    import ray

    todo = [r for pair in chosen_groups(stage2).values() for g in pair if g is not None for r in g.records]
    jobs = [(r, *_tested_config(study, r)) for r in todo if not r.test]
    pending, started, total = {}, time.monotonic(), len(jobs)
    while jobs or pending:
        while jobs and (not pending or cores is None or evaluation_cpus(jobs[0][1]) * (len(pending) + 1) <= cores):
            record, cfg, folder = jobs.pop(0)
            tests = [load_dataset(name, cfg.data.test_split, cfg.data.data_dir) for name in cfg.data.test_datasets]
            pending[evaluate_remote(folder, cfg, tests)] = record
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        record = pending.pop(ref)
        _add_results(record, ray.get(ref))
        _progress("test", total - len(jobs) - len(pending), total, record, started)
    large_test_phase(study, todo)


def large_test_phase(study: StudyConfig, todo: list) -> None:
    """The large collections, per collection (smallest first) and tested trial; done ones are skipped."""
    names = expand_names(study.train.data.large_test_datasets)
    jobs = [(n, r) for n in names for r in todo if n not in {t["dataset"] for t in _results(r)}]
    started = time.monotonic()
    for done, (name, record) in enumerate(jobs, 1):
        cfg, folder = _tested_config(study, record)
        _add_results(record, sharded_evaluation(cfg)(folder, [load_topics(name, None, cfg.data.data_dir)]))
        _progress(f"test {name}", done, len(jobs), record, started)


def _tested_config(study: StudyConfig, record) -> tuple[Any, Path | None]:
    """A tested trial's config (the study's test sets and evaluation settings) and its best checkpoint."""
    from sbmoe_ray.train.config import TrainConfig

    data = json.loads(Path(record.file).read_text())
    cfg = TrainConfig.from_dict({**data["config"], "data": {**data["config"]["data"],
                                                             "test_datasets": study.train.data.test_datasets},
                                 "evaluation": study.train.to_dict()["evaluation"]})
    return cfg, Path(data["best_checkpoint"]) if data.get("best_checkpoint") else None


def _results(record) -> list[dict]:
    return json.loads(Path(record.file).read_text()).get("test") or []


def _add_results(record, results: list) -> None:
    """Append test results to a trial's results file (atomically)."""
    data = json.loads(Path(record.file).read_text())
    data["test"] = (data.get("test") or []) + [r.to_dict() for r in results]
    tmp = Path(record.file).with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(record.file)


def _progress(what: str, done: int, total: int, record, started: float) -> None:
    elapsed = time.monotonic() - started
    print(f"[{what}] {done}/{total} {label(record.params, record.seed)} tested in {elapsed / 60:.1f} min; "
          f"~{elapsed / done * (total - done) / 60:.1f} min left", flush=True)


def stage_seconds(folder: Path) -> float:
    """Wall time of a stage: first trial's start to last trial's end, from its results files."""
    spans = [json.loads(p.read_text()).get("seconds", {}) for p in Path(folder).glob(f"runs/*/{RESULTS_FILE}")]
    spans = [s for s in spans if "start" in s and "end" in s]
    return max(s["end"] for s in spans) - min(s["start"] for s in spans) if spans else math.nan


def stage_times(study: StudyConfig) -> dict[str, float]:
    """Where a two-stage study's time went: each stage's trials (first start to last end) and the test
    phase (the sum of its evaluations' own time: encoding, search, scoring; not its wall time when
    evaluations run side by side)."""
    stage2 = study.finetune_study()
    tested = [r for r in load_trials(stage2.study_dir) if r.test]
    return {"stage 1": stage_seconds(study.study_dir), "stage 2 training": stage_seconds(stage2.study_dir),
            "test evaluations (summed; several run at once where resources allow)":
                sum(t["seconds"].get("total", 0.0) for r in tested for t in r.test)}


def read_promotions(study: StudyConfig) -> list[dict[str, Any]] | None:
    """The promotions of a study whose stage 2 has started, else None."""
    path = study.finetune_study().study_dir / "promoted.json"
    return json.loads(path.read_text())["entries"] if path.is_file() else None
