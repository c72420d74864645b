"""The main job: a two-stage study of SB-MoE configurations, from the first check to the report.

The study follows Sokli et al. (2025), "Mixture of Experts Approaches in Dense Retrieval Tasks"
(arXiv 2510.15683): one SB-MoE block after the last layer of a bi-encoder, compared with the same
bi-encoder without it.

  Checks.    Everything that can be wrong is found before any work (config, data, models, storage,
             tracking store, cluster), then the embedding caches are built.
  Stage 1.   The proxy: Optuna TPE inside Ray Tune over the search space, a frozen encoder with the
             SB-MoE head trained on cached embeddings (seconds a trial), each base model's baseline
             first, each configuration over ``proxy.seeds`` training seeds, ranked by a validation
             objective (never a test metric).
  Budget.    With ``budget_minutes``, stage 2 is planned to fit from costs measured on this machine,
             least-needed work dropped first; the estimate is printed before stage 1, the plan at stage 2.
  Stage 2.   Fine-tuning, per base model: the top ``promote`` configurations, ``finetune.controls``
             random others and plain fine-tuning on Ray Train workers; the one it chooses and the
             baseline are tested on every test set; the proxy's ranking is checked (Kendall's τ).
  Tracking.  One MLflow parent run for the study, one child run per stage, the trials under their
             stage. An interrupted study resumes where it stopped: run it again with the same name.
"""

from __future__ import annotations

import json
import math
import sys
import time

from sbmoe_ray.study.config import StudyConfig


def run(study: StudyConfig, resume: bool = False, address: str | None = None, started: float | None = None) -> int:
    started = time.monotonic() if started is None else started      # the budget counts from here
    # Imported once the config is known good: a bad config answers before torch, Ray and MLflow load.
    from sbmoe_ray.runtime.cluster import check_shared_storage, cluster_address, init_ray
    from sbmoe_ray.stages.tune import prepare_study, save_study_config
    from sbmoe_ray.tracking import StudyTracker, check_tracking_uri

    # Everything that can be wrong is found before any work (before a local Ray starts; on a cluster,
    # right after connecting); then the embedding caches are built.
    study = study.resolved()
    check_tracking_uri(study.tracking_uri)
    if cluster_address(address):      # a cluster: every node must see the study and its embedding cache
        init_ray(address, 0)
        check_shared_storage([study.study_dir, study.cache_dir])
    if study.promote and study.budget_seconds() is not None:
        say_forecast(study, cores_of(address))
    prepare_study(study, resume)
    save_study_config(study)
    s, ft = study.train.scaling, study.finetune
    cpus = max(study.search.max_concurrent * (0.25 + s.num_workers * s.cpus_per_worker),
               ft.max_concurrent * (0.25 + ft.num_workers * ft.cpus_per_worker) if study.promote else 0)
    init_ray(address, cpus + 1)
    tracker = StudyTracker(study)
    tracker.parent_run(study)
    failed = proxy_stage(study, tracker)
    if study.promote and not failed:
        failed = finetune_stage(study, tracker, started, cores_of(address))
    tracker.finish("FAILED" if failed else "FINISHED")
    return 1 if failed else 0


def cores_of(address: str | None) -> int:
    """The cores the stage-2 plan spreads work over: this machine's, or the cluster's CPUs."""
    import os

    import ray

    from sbmoe_ray.runtime.cluster import cluster_address

    if cluster_address(address):
        return max(1, int(ray.cluster_resources().get("CPU", 1)))
    return len(os.sched_getaffinity(0))


def say_forecast(study: StudyConfig, cores: int) -> None:
    """The budget's forecast before any long work, unless stage 2 is already planned (a resume)."""
    from sbmoe_ray.stages.budget import PLAN_FILE, forecast

    if (study.finetune_study().study_dir / PLAN_FILE).is_file():
        return
    line, fits = forecast(study, cores)
    print(line, flush=True)
    if not fits:
        print(f"sbmoe: warning: budget_minutes={study.budget_minutes} cannot be met on this machine: even "
              "the least stage 2 and its test phase exceed it; stage 2 will run that least and report the overrun. "
              "--set promote=0 runs the proxy only; fewer train.data.test_datasets or a larger budget also fit",
              file=sys.stderr, flush=True)


def proxy_stage(study: StudyConfig, tracker) -> int:
    """Stage 1: the frozen-encoder search, its comparisons, summary and report."""

    from sbmoe_ray.analysis.report import budget_line, summary_rows, write_report, write_trial_figures
    from sbmoe_ray.analysis.records import format_table, group_trials, load_trials
    from sbmoe_ray.stages.tune import build_tuner
    from sbmoe_ray.tracking import MlflowStudyCallback
    from sbmoe_ray.stages.finetune import ProgressCallback

    stage = tracker.for_stage("proxy", "stage 1: proxy (frozen encoder, SB-MoE head)")
    total = study.search.num_trials * study.search.seeds
    started = time.monotonic()
    failed = len(build_tuner(study, callbacks=[MlflowStudyCallback(stage), ProgressCallback("stage 1", total)]).fit().errors)
    records = load_trials(study.study_dir)
    datasets, groups = study.test_names, group_trials(records)
    stage.log_comparisons(groups, datasets)
    report = write_report(study, records)                  # also writes the summary printed here
    summary = json.loads((report.parent / "summary.json").read_text())
    rows = summary_rows(summary, datasets)
    columns = ["base_model", "best", "seeds", *[f"{d} {c}" for d in datasets for c in ("base", "moe", "Δ", "p adj")]]
    print(f"\n{study.name}, stage 1 (proxy): {len(records)} trials; test nDCG@10 (mean over seeds), baseline vs the "
          f"SB-MoE configuration chosen by mean {study.search.objective}; p adj: paired t over queries, Holm over "
          f"every configuration and test set\n{budget_line(summary)}")
    print(format_table(rows, columns))
    stage.log_trial_files(write_trial_figures(study.study_dir / "trial_figures", records))
    stage.finish_stage({"seconds": time.monotonic() - started}, "FAILED" if failed else "FINISHED")
    tracker.log_report(report)
    print(f"report: {report}\nMLflow: {study.tracking_uri} (experiment {study.name!r})")
    if failed:
        print(f"{failed} trial(s) failed: see {study.study_dir / 'tune'}/*/error.txt; run the study again to "
              "retry them", file=sys.stderr)
    return failed


def finetune_stage(study: StudyConfig, tracker, started: float, cores: int) -> int:
    """Stage 2: promote, plan to the budget (if any), fine-tune on Ray Train workers, test the chosen, check
    the proxy, report."""
    from sbmoe_ray.analysis.records import group_trials, load_trials
    from sbmoe_ray.study.space import BY_NAME
    from sbmoe_ray.analysis.report_finetune import write_finetune_section
    from sbmoe_ray.tracking import MlflowStudyCallback
    from sbmoe_ray.stages.finetune import ProgressCallback, finetune_tuner, promote, stage2_points, stage_times, test_phase

    stage2 = study.finetune_study()
    entries, seeds, why, plan = planned(study, promote(study), started, cores)
    points = stage2_points(entries, seeds)
    print(f"\nstage 2 (fine-tuning): {len(entries)} configurations x {seeds} seed(s) ({why}) = {len(points)} "
          f"trials on {study.finetune.num_workers} Ray Train workers each", flush=True)
    stage = tracker.for_stage("finetune", "stage 2: fine-tuning (encoder + SB-MoE head)")
    stage_started = time.monotonic()
    callbacks = [MlflowStudyCallback(stage), ProgressCallback("stage 2", len(points))]
    failed = len(finetune_tuner(stage2, points, callbacks).fit().errors)
    if failed:
        print(f"{failed} stage-2 trial(s) failed: see {stage2.study_dir / 'tune'}/*/error.txt; run the study "
              "again to retry them", file=sys.stderr)
        stage.finish_stage(status="FAILED")
        return failed
    test_phase(study, stage2, None if study.finetune.use_gpu else cores)
    records = load_trials(stage2.study_dir)
    stage.log_test_results(records)
    summary = write_finetune_section(study, entries, stage_times(study), seeds, plan)
    stage.log_comparisons([g for g in group_trials(records) if g.tested], study.final_test_names)
    estimate = {f"plan_{k}_seconds": v for k, v in plan.estimate_s.items()} if plan else {}
    stage.finish_stage({"seconds": time.monotonic() - stage_started, **estimate})
    short = BY_NAME["base_model"].show
    tracker.log_parent_metrics({f"{short(m)}.{k}": a[k] for m, a in summary["agreement"].items()
                                for k in ("kendall_tau", "spearman_rho") if not math.isnan(a[k])})
    tracker.log_report(study.study_dir / "report" / "report.md")
    for model, a in summary["agreement"].items():
        print(a["verdict"])
    print(f"report (both stages): {study.study_dir / 'report' / 'report.md'}")
    return 0


def planned(study: StudyConfig, entries: list, started: float, cores: int) -> tuple[list, int, str, object]:
    """Stage 2's entries and seeds: as promoted, or as planned within ``budget_minutes`` (the plan made once,
    from costs measured here, and read back on resume)."""
    from sbmoe_ray.stages.budget import load_or_plan, plan_stage2

    seeds, why = study.finetune.replicates()
    if study.budget_seconds() is None:
        return entries, seeds, why, None
    folder = study.finetune_study().study_dir
    plan = load_or_plan(folder, lambda: plan_stage2(study, entries, seeds, started, cores))
    print(plan.describe(), flush=True)
    return plan.kept, plan.seeds, why if plan.seeds == seeds else f"{why}; {plan.seeds} to fit budget_minutes", plan
