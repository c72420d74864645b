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
import os
import sys
import time
from pathlib import Path
from typing import Any

from sbmoe_ray.runtime.signals import raise_if_stopped, release, stopped, stopping_on_signals, take_signals
from sbmoe_ray.study.config import StudyConfig


def run(study: StudyConfig, resume: bool = False, address: str | None = None, started: float | None = None,
        allow_new_versions: bool = False) -> int:
    """The study, from its checks to its report; 0 when every trial finished, 1 when one failed (run it
    again to retry it), 130 (143) when Ctrl-C (SIGTERM) stopped it (:mod:`sbmoe_ray.runtime.signals`)."""
    from sbmoe_ray.stages.progress import quiet_third_parties

    quiet_third_parties()
    with stopping_on_signals():
        try:
            return _run(study, resume, address, started, allow_new_versions)
        except KeyboardInterrupt as exc:        # before its MLflow runs began: nothing to end
            stop = stopped(exc)
            print(f"\nsbmoe: stopped by {stop}", file=sys.stderr, flush=True)
            return stop.exit_code


def _run(study: StudyConfig, resume: bool, address: str | None, started: float | None,
         allow_new_versions: bool) -> int:
    started = time.monotonic() if started is None else started      # the budget counts from here
    # Imported once the config is known good: a bad config answers before torch, Ray and MLflow load.
    from sbmoe_ray.data.provenance import dataset_uses
    from sbmoe_ray.runtime.cluster import check_job_paths, check_shared_storage, cluster_address, init_ray
    from sbmoe_ray.stages.checks import check_study, removed_if_refused
    from sbmoe_ray.stages.prepare import prepare_study
    from sbmoe_ray.tracking import StudyTracker

    # Every cheap check before any work (before a local Ray starts; on a cluster, right after connecting);
    # then the forecast, the embedding caches and the stages.
    check_job_paths({"config.storage_path": study.storage_path, "config.tracking_uri": study.tracking_uri,
                     "config.train.data.data_dir": study.train.data.data_dir,
                     "config.train.memory.cache_dir": study.train.memory.cache_dir})
    study, on_cluster = study.resolved(), bool(cluster_address(address))
    if on_cluster:
        init_ray(address, 0)
    with removed_if_refused(study.layout.root):      # a refused new study leaves no folder behind
        identity = check_study(study, resume, local=not on_cluster, allow_new_versions=allow_new_versions)
        if identity is None:
            print(f"sbmoe: study {study.name!r} is complete ({study.layout.report_file}); nothing to run "
                  f"(`sbmoe report {study.layout.root}` rebuilds its report)", flush=True)
            return 0
        if on_cluster:       # every node must see the study and its embedding cache, and have what trials ask
            check_shared_storage([study.layout.root, study.cache_dir])
            check_cluster_resources(study)
        if study.promote:
            print(f"sbmoe: study {study.name!r}, stage 2 {study.depth_label()} (every arm; "
                  "finetune.trained_layers)", flush=True)
        costs = say_forecast(study, cores_of(address)) if study.promote and study.budget_seconds() is not None \
            else None
        prepare_study(study, identity)
    init_ray(address, ray_cpus(study) + 1, study.train.scaling.dashboard)
    take_signals()                                   # ray.init installed its own SIGTERM handler
    tracker = StudyTracker(study.tracking_uri, study.name, study.layout.mlflow_runs_file, study.train.run.seed)
    tracker.start_study(study_params(study), dataset_uses(study.train.data))
    try:
        return run_stages(study, tracker, started, address, costs)
    except KeyboardInterrupt as exc:
        from mlflow.exceptions import MlflowException

        stop, ended = stopped(exc), "the MLflow runs in progress ended KILLED"
        release(exc)                        # a store write the signal cut short gives its lock back
        try:
            tracker.stop_all()
        except MlflowException as err:      # the store stayed locked: the resumed study takes the runs up again
            ended = f"the MLflow runs in progress could not be marked KILLED ({str(err).splitlines()[0]})"
        if not on_cluster:
            import ray

            ray.shutdown()                  # the local Ray this command started, and every trial in it
        print(f"\nsbmoe: stopped by {stop}; {ended}. The same command resumes the study {study.name!r} where it "
              "stopped", file=sys.stderr, flush=True)
        return stop.exit_code


def run_stages(study: StudyConfig, tracker, started: float, address: str | None, costs) -> int:
    """Stage 1, stage 2 (if promoted), the chosen models published; 0, or 1 when a trial failed."""
    from sbmoe_ray.stages.finetune import not_run, publish_finetune, run_finetune
    from sbmoe_ray.stages.finetune_setup import setup_stage2
    from sbmoe_ray.stages.proxy import run_proxy
    from sbmoe_ray.stages.publish import publish_models

    final = proxy = run_proxy(study, tracker)
    failed = proxy.failed > 0
    raise_if_stopped()                  # a signal a library swallowed during the stage stops before the next
    if study.promote and not failed:
        cores = cores_of(address)
        setup = setup_stage2(study, proxy, started, cores, costs)         # stage 2 decided once, handed on
        if setup.runs_nothing:
            final = not_run(study, tracker, proxy, setup.plan)
        else:
            final = run_finetune(study, tracker, proxy, setup, started, cores)
            failed = final is None
            raise_if_stopped()
            if not failed:
                publish_finetune(study, tracker, proxy, final)
    if not failed:
        publish_models(study, tracker, final)
        say_where(study, final.summary)
    tracker.finish("FAILED" if failed else "FINISHED")
    if not failed:
        study.layout.completed_file.write_text(json.dumps({"finished": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    return 1 if failed else 0


def say_where(study: StudyConfig, summary) -> None:
    """The last lines of a study: where its answer is (the report, the MLflow UI, the registered models)."""
    from sbmoe_ray.tracking.models import registered_name

    models = [f"models:/{registered_name(study.name, a.base_model)}@champion" for a in summary.per_base_model]
    prog = sys.argv[0] if sys.argv[0].endswith("sbmoe") else "sbmoe"          # .venv/bin/sbmoe after make
    print(f"\nreport:  {study.layout.report_file}\nMLflow:  {prog} ui {study.layout.root}   (its runs, on "
          f"127.0.0.1)" + "".join(f"\nmodel:   {m}" for m in models), flush=True)


def check_cluster_resources(study: StudyConfig) -> None:
    """What one worker of each stage asks for, against the cluster's largest node."""
    from sbmoe_ray.runtime.cluster import check_resources

    s, ft = study.train.scaling, study.finetune
    requests = {f"config.train.scaling.cpus_per_worker={s.cpus_per_worker}, use_gpu={s.use_gpu}":
                (s.cpus_per_worker, float(s.use_gpu))}
    if study.promote:
        requests[f"config.finetune.cpus_per_worker={ft.cpus_per_worker}, use_gpu={ft.use_gpu}"] = \
            (ft.cpus_per_worker, float(ft.use_gpu))
    check_resources(requests)


def rebuild_report(study_dir: Path) -> Path:
    """``sbmoe report``: a study's report, and its answer on its MLflow parent run, rebuilt from what the
    study left on disk (its config, the trials' results files, the promotions and the plan)."""
    from sbmoe_ray.analysis.records import load_trials
    from sbmoe_ray.analysis.report import write_report
    from sbmoe_ray.analysis.result import analyze_proxy
    from sbmoe_ray.stages.budget import read_plan
    from sbmoe_ray.stages.finetune import rebuild
    from sbmoe_ray.study.config import load_study
    from sbmoe_ray.tracking import StudyTracker

    study = load_study(study_dir)
    proxy = analyze_proxy(study, load_trials(study.layout.proxy))
    finetune = rebuild(study, proxy)
    plan = read_plan(study.layout.plan_file)
    write_report(study, proxy, finetune, stage2_not_run=plan.not_run() if plan and plan.runs_nothing else None)
    tracker = StudyTracker(study.tracking_uri, study.name, study.layout.mlflow_runs_file, study.train.run.seed)
    if tracker.runs["parent"]:
        tracker.log_answer(proxy.summary, finetune.agreement if finetune else None,
                           finetune.summary.primary if finetune else None)
        tracker.log_report(study.layout.report_dir)
    return study.layout.report_file


def ray_cpus(study: StudyConfig) -> float:
    """The logical CPUs a local Ray needs for the stages' concurrent trials (a trial driver holds 0.25)."""
    s, ft = study.train.scaling, study.finetune
    return max(study.proxy.max_concurrent * (0.25 + s.num_workers * s.cpus_per_worker),
               ft.max_concurrent * (0.25 + ft.num_workers * ft.cpus_per_worker) if study.promote else 0)


def cores_of(address: str | None) -> int:
    """The cores the stage-2 plan spreads work over: this machine's, or the cluster's CPUs."""
    import ray

    from sbmoe_ray.runtime.cluster import cluster_address

    if cluster_address(address):
        return max(1, int(ray.cluster_resources().get("CPU", 1)))
    return len(os.sched_getaffinity(0))


def say_forecast(study: StudyConfig, cores: int):
    """The budget's forecast before any long work, unless stage 2 is already planned (a resume); returns the
    costs it measured (the plan uses them)."""
    from sbmoe_ray.stages.budget import forecast

    if study.layout.plan_file.is_file():
        return None
    estimate = forecast(study, cores)
    print(estimate.summary_line(), flush=True)
    if not estimate.fits:
        print(f"sbmoe: warning: budget_minutes={study.budget_minutes} cannot hold stage 2 on this machine: even "
              f"the least stage 2 and its test phase exceed it, so stage 2 will not run and the answer will be "
              f"stage 1's; --set budget_minutes={math.ceil(estimate.least_s / 60) + 15} (or a GPU) runs it",
              file=sys.stderr, flush=True)
    return estimate.costs


def study_params(study: StudyConfig) -> dict[str, Any]:
    """What the study's parent run records: its definition, its data (checksums, identical-id rule), the
    software it ran with and the precision chosen here."""
    from sbmoe_ray.data.provenance import dataset_provenance
    from sbmoe_ray.runtime.environment import environment
    from sbmoe_ray.runtime.precision import explain, resolve_precision

    device = study.train.scaling.device_type
    precision = resolve_precision(study.train.memory.precision, device)
    return {**study.fingerprint(), "proxy": study.proxy.to_dict(),
            "finetune": json.loads(json.dumps(study.finetune.to_dict(), default=str)), "promote": study.promote,
            "regime": study.depth_label() if study.promote else "stage 1 only (frozen encoder)",
            "train": json.loads(json.dumps(study.train.to_dict(), default=str)),
            "dataset": dataset_provenance(study.train.data), **environment(),
            "precision": {"resolved": precision, "why": explain(precision, device)}}
