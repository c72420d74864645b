"""How many experts, how many active, which learning rate, for which base encoder?

The study follows Sokli et al. (2025), "Mixture of Experts Approaches in Dense Retrieval Tasks":
one SB-MoE block after the last layer of a bi-encoder, compared with the same bi-encoder without it.

  Models.    Each base encoder in ``space.base_model``, with and without an SB-MoE block of
             ``num_experts`` experts (the paper: 3, 6, 9, 12); ``top_k`` experts are active in
             training, and at inference either the same ``top_k`` or all of them ("all").
  Training.  In-batch-negatives contrastive loss with a temperature, AdamW, the encoder at a much
             lower learning rate than the SB-MoE block, a Switch load-balancing loss. The default
             study freezes the encoder and trains the block on cached embeddings (seconds a trial);
             ``--paper`` fine-tunes the encoder as the paper does.
  Search.    Optuna TPE inside Ray Tune; each base model's baseline first, so that every SB-MoE trial
             has a paired baseline; the objective is a validation metric, never a test metric.
  Testing.   nDCG@10 and R@100 (also MRR@10, MAP@100, P@1) on the in-domain test split and zero-shot
             collections; Δ against the baseline with a paired t-test.
  Tracking.  One MLflow parent run for the study, one nested run per trial. An interrupted study
             resumes where it stopped: run it again with the same name (or ``--resume``).

    python studies/experts_sweep.py [--config studies/experts_sweep.yaml] [--set key=value ...]
                                    [--paper] [--resume] [--tracking-uri URI] [--address ADDR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sbmoe_ray.config import load_config
from sbmoe_ray.errors import SbmoeError
from sbmoe_ray.study_config import StudyConfig

HERE = Path(__file__).parent


def run(study: StudyConfig, resume: bool = False, address: str | None = None) -> int:
    # Imported once the config is known good: a bad config answers before torch, Ray and MLflow load.
    from sbmoe_ray.cluster import check_shared_storage, cluster_address, init_ray
    from sbmoe_ray.comparisons import study_summary
    from sbmoe_ray.report import budget_line, summary_rows, write_report, write_trial_figures
    from sbmoe_ray.results import format_table, group_trials, load_trials
    from sbmoe_ray.study import build_tuner, prepare_study, save_study_config
    from sbmoe_ray.tracking import MlflowStudyCallback, StudyTracker, check_tracking_uri

    # Everything that can be wrong is found before any work (before a local Ray starts; on a cluster,
    # right after connecting); then the embedding caches are built.
    study = study.resolved()
    check_tracking_uri(study.tracking_uri)
    if cluster_address(address):      # a cluster: every node must see the study and its embedding cache
        init_ray(address, 0)
        check_shared_storage([study.study_dir, study.cache_dir])
    prepare_study(study, resume)
    save_study_config(study)
    scaling = study.train.scaling
    init_ray(address, study.search.max_concurrent * (0.25 + scaling.num_workers * scaling.cpus_per_worker) + 1)

    tracker = StudyTracker(study)
    tracker.parent_run(study)
    failed = len(build_tuner(study, callbacks=[MlflowStudyCallback(tracker)]).fit().errors)

    # Paired comparisons against each base model's baseline, the summary, the report and its files.
    records = load_trials(study.study_dir)
    datasets, groups = study.test_names, group_trials(records)
    tracker.log_comparisons(groups, datasets)
    summary = study_summary(groups, datasets, study.mode, study.search.objective, study.budget())
    rows = summary_rows(summary, datasets)
    columns = ["base_model", "best", "seeds", *[f"{d} {c}" for d in datasets for c in ("base", "moe", "Δ", "p adj")]]
    print(f"\n{study.name}: {len(records)} trials; test nDCG@10 (mean over seeds), baseline vs the SB-MoE "
          f"configuration chosen by mean {study.search.objective}; p adj: paired t over queries, Holm over every "
          f"configuration and test set\n{budget_line(summary)}")
    print(format_table(rows, columns))
    report = write_report(study, records)
    tracker.log_trial_files(write_trial_figures(study.study_dir / "trial_figures", records))
    tracker.log_report(report)
    print(f"report: {report}\nMLflow: {study.tracking_uri} (experiment {study.name!r})")
    if failed:
        print(f"{failed} trial(s) failed: see {study.study_dir / 'tune'}/*/error.txt; run the study again to "
              "retry them", file=sys.stderr)
    tracker.finish("FAILED" if failed else "FINISHED")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(HERE / "experts_sweep.yaml"))
    parser.add_argument("--paper", action="store_true", help="the paper's grid (studies/paper.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted study of this name")
    parser.add_argument("--tracking-uri", default=None, help="MLflow URI (default: the config's, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or local)")
    args = parser.parse_args(argv)
    overrides = args.set + ([f"tracking_uri={args.tracking_uri}"] if args.tracking_uri else [])
    try:
        study = load_config(StudyConfig, Path(HERE / "paper.yaml" if args.paper else args.config), overrides)
        return run(study, args.resume, args.address)
    except SbmoeError as exc:
        print(f"experts_sweep: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
