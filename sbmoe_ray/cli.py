"""The ``sbmoe`` command line: ``study`` (the main job), ``train``, ``evaluate``, ``report``, ``export``,
``derive``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from sbmoe_ray.analysis.records import format_table
from sbmoe_ray.errors import SbmoeError

STARTED = time.monotonic()     # a study's budget_minutes counts from the command's start (imports included)
PRESETS = Path(__file__).parent / "presets"


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def cmd_evaluate(args: argparse.Namespace) -> None:
    _quiet_transformers()
    from sbmoe_ray.data.beir import load_dataset
    from sbmoe_ray.evaluation.dense import EncodeSettings, evaluate
    from sbmoe_ray.evaluation.metrics import METRICS
    from sbmoe_ray.model.backbones import load_tokenizer
    from sbmoe_ray.model.bi_encoder import ModelConfig, build_bi_encoder
    from sbmoe_ray.runtime.precision import explain, resolve_precision
    from sbmoe_ray.train.checks import check_device, check_writable

    output = Path(args.output)
    check_writable(output.parent, "--output")        # before the evaluation: its results must have a place
    if args.trec_dir:
        check_writable(Path(args.trec_dir), "--trec-dir")
    check_device(args.device, "--device")
    config = ModelConfig(base_model=args.model, max_length=args.max_length).resolved()
    precision = resolve_precision(args.precision, args.device)
    print(explain(precision, args.device), flush=True)
    settings = EncodeSettings(batch_size=args.batch_size, max_length=config.max_length, precision=precision,
                              device=args.device)
    as_flags(settings.validate)
    if args.sharded:
        results = _evaluate_sharded(args, config, settings)
    else:
        datasets = [load_dataset(name, args.split or "test", args.data_dir) for name in args.dataset]  # all first
        model = build_bi_encoder(config).to(args.device)
        tokenizer = load_tokenizer(config.base_model)
        results = [evaluate(model, tokenizer, ds, settings) for ds in datasets]
    rows = [{"dataset": r.dataset, "split": r.split, "queries": r.metrics.num_queries, **r.metrics.means,
             "seconds": r.seconds["total"], **({"index": r.search["index"]} if r.search else {}),
             **({"index recall@100 vs exact": r.search["recall@100"]} if "recall@100" in r.search else {})}
            for r in results]
    print(f"\nmodel {args.model} ({config.pooling} pooling, normalize={config.normalize}, "
          f"max_length={config.max_length}, {precision})")
    extra = [c for c in ("index", "index recall@100 vs exact") if any(c in row for row in rows)]
    print(format_table(rows, ["dataset", "split", "queries", *METRICS, "seconds", *extra]))
    output.write_text(json.dumps({"model": args.model, "model_config": vars(config), "precision": precision,
                                  "results": [r.to_dict() for r in results]}, indent=2))
    print(f"wrote {output}")
    if args.trec_dir:
        from sbmoe_ray.evaluation.trec import write_trec

        for r in (r for r in results if r.run is not None):
            print(f"wrote {write_trec(r.run, Path(args.trec_dir) / f'{Path(r.dataset).name}.trec', args.model)}")


def _evaluate_sharded(args: argparse.Namespace, config, settings) -> list:
    """Large collections: queries and qrels read, the corpus encoded in shards by ``--workers`` Ray tasks
    (resumable: run the same command again) and searched shard by shard
    (:mod:`sbmoe_ray.evaluation.sharded.evaluate`)."""
    from sbmoe_ray.data.collections import expand_names, load_topics
    from sbmoe_ray.evaluation.checkpoint import LiveEvaluation
    from sbmoe_ray.evaluation.config import EvaluationConfig
    from sbmoe_ray.evaluation.sharded.evaluate import ShardedEvaluation

    options = EvaluationConfig(sharded=True, encode_workers=args.workers, shard_rows=args.shard_rows,
                               index=args.index, search_memory_mb=args.search_memory_mb)
    as_flags(options.validate)
    datasets = [load_topics(name, args.split, args.data_dir) for name in expand_names(args.dataset)]
    evaluation = ShardedEvaluation(LiveEvaluation(config, settings), options, str(Path(args.shards).resolve()),
                                   args.workers, use_gpu=args.device.startswith("cuda"))
    return evaluation(None, datasets)


def as_flags(validate) -> None:
    """A settings check whose errors name the command-line flag (``--batch-size``), not a config key."""
    import re

    try:
        validate("--")
    except SbmoeError as exc:
        raise type(exc)(re.sub(r"--\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), str(exc))) from None


def cmd_train(args: argparse.Namespace) -> None:
    from sbmoe_ray.train import load_train_config

    config = load_train_config(Path(args.config), args.set or [])
    from sbmoe_ray.runtime.cluster import cluster_address
    from sbmoe_ray.train.checks import check_gpus, check_writable

    check_writable(Path(config.run.storage_path).resolve(), "config.run.storage_path")
    if not cluster_address(args.address):
        check_gpus(config.scaling.use_gpu, "config.scaling.use_gpu")
    from sbmoe_ray.evaluation.metrics import METRICS  # after the config is known good: these import torch and Ray
    from sbmoe_ray.train import fit

    _quiet_transformers()
    result = fit(config, address=args.address)
    print(f"\nbest checkpoint (by {config.run.checkpoint_metric}): epoch {result.best_metrics.get('epoch')}  "
          f"{result.best_checkpoint}")
    rows = [{"dataset": r.dataset, "split": r.split, "queries": r.metrics.num_queries, **r.metrics.means}
            for r in result.test]
    print(format_table(rows, ["dataset", "split", "queries", *METRICS]))
    print(f"wrote {Path(result.config.run_dir) / 'results.json'}")


def cmd_report(args: argparse.Namespace) -> None:
    from sbmoe_ray.stages.pipeline import rebuild_report

    print(f"wrote {rebuild_report(study_folder(args.study))}")


def study_folder(name: str | None) -> Path:
    """A study folder given by path, or by name under the default storage path (default: the quick start's)."""
    from sbmoe_ray.study.config import StudyConfig

    default = StudyConfig()
    folder = Path(name or default.name)
    return folder if folder.is_dir() else Path(default.storage_path).resolve() / folder


def cmd_ui(args: argparse.Namespace) -> int:
    from sbmoe_ray.tracking.ui import run_ui

    return run_ui(study_folder(args.study), args.port, not args.no_browser)


def study_config_path(name: str) -> Path:
    """A study YAML given by path, or a preset shipped with the package by name (``experts_sweep``, ``paper``)."""
    from sbmoe_ray.errors import ConfigError

    path = Path(name)
    if path.is_file():
        return path
    preset = PRESETS / f"{name.removesuffix('.yaml')}.yaml"
    if preset.is_file() and len(path.parts) == 1:
        return preset
    names = sorted(p.stem for p in PRESETS.glob("*.yaml"))
    raise ConfigError(f"--config {name!r}: no such file, and not a preset; presets are {names} "
                      "(or give the path of a study YAML)")


def cmd_study(args: argparse.Namespace) -> int:
    from sbmoe_ray.config import load_config
    from sbmoe_ray.study.config import StudyConfig

    if args.verbose:
        os.environ["SBMOE_VERBOSE"] = "1"          # Ray Tune's trial tables (sbmoe_ray/stages/progress.py)
    overrides = args.set + ([f"tracking_uri={args.tracking_uri}"] if args.tracking_uri else [])
    study = load_config(StudyConfig, study_config_path("paper" if args.paper else args.config), overrides)
    from sbmoe_ray.stages.pipeline import run  # after the config is known good: torch, Ray, MLflow

    return run(study, args.resume, args.address, STARTED, args.allow_new_versions)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("sbmoe-ray")
    except metadata.PackageNotFoundError:
        from sbmoe_ray import __version__

        return __version__


def _study_parser(sub) -> None:
    st = sub.add_parser("study", help="the main job: a two-stage study (proxy search, then fine-tuning), its "
                        "report and MLflow runs; run it again to resume")
    st.add_argument("--config", default="experts_sweep", help="a study YAML, or a preset: "
                    + ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml"))) + " (default: experts_sweep)")
    st.add_argument("--paper", action="store_true", help="the paper's grid (the preset paper)")
    st.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. promote=0")
    st.add_argument("--resume", action="store_true", help="continue the interrupted study of this name")
    st.add_argument("--verbose", action="store_true", help="Ray Tune's own trial tables too (its logs are always in "
                    "the study folder)")
    st.add_argument("--allow-new-versions", action="store_true", help="resume a study although torch, "
                    "transformers, ray, optuna or sbmoe-ray changed version since it began (recorded)")
    st.add_argument("--tracking-uri", default=None,
                    help="MLflow URI (default: the config's, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    st.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or local)")
    st.set_defaults(func=cmd_study)


def _evaluate_parser(sub) -> None:
    ev = sub.add_parser("evaluate", help="zero-shot evaluation of a base model on BEIR datasets")
    ev.add_argument("--model", default="minilm", help="short name (minilm, tinybert, ...), hub id or folder")
    ev.add_argument("--dataset", action="append", required=True, help="BEIR name or folder; repeatable")
    ev.add_argument("--split", default=None, help="default: test (msmarco: dev)")
    ev.add_argument("--data-dir", default=None, help="data root (default: $SBMOE_DATA_DIR or ~/.cache/sbmoe/beir)")
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--max-length", type=int, default=None, help="default: the model folder's max_seq_length")
    ev.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="auto: bf16 where native (a GPU, a CPU with AVX-512 BF16/AMX), else fp32")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--output", default="results/evaluate.json")
    ev.add_argument("--trec-dir", default=None, help="also write each dataset's ranking there as a TREC run file "
                    "(<dataset>.trec, top 100; trec_eval, ranx and ir_measures read it)")
    ev.add_argument("--sharded", action="store_true", help="encode each corpus in shards over Ray workers and "
                    "search shard by shard (large collections; --dataset beir-13 names the paper's 13)")
    ev.add_argument("--workers", type=int, default=2, help="--sharded: encoding tasks in flight")
    ev.add_argument("--shard-rows", type=int, default=50_000, help="--sharded: documents per shard file")
    ev.add_argument("--index", default="flat", help="--sharded: flat (exact), hnsw, ivf or auto (by size)")
    ev.add_argument("--search-memory-mb", type=int, default=1024, help="--sharded: memory bound of the search")
    ev.add_argument("--shards", default="results/encoded_shards", help="--sharded: shard files (resume from)")
    ev.set_defaults(func=cmd_evaluate)


def _train_and_report_parsers(sub) -> None:
    tr = sub.add_parser("train", help="one distributed SB-MoE training run, then test evaluation")
    tr.add_argument("--config", required=True, help="YAML file with TrainConfig keys (see configs/)")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. model.num_experts=6")
    tr.add_argument("--address", default=None, help="Ray cluster address ('auto' or host:port); "
                    "default: $RAY_ADDRESS, else a local Ray started for this run")
    tr.set_defaults(func=cmd_train)
    rp = sub.add_parser("report", help="write a study's report (markdown + PNGs) and log it to MLflow")
    rp.add_argument("study", help="study folder, or a study name under results/studies")
    rp.set_defaults(func=cmd_report)
    ui = sub.add_parser("ui", help="the MLflow UI over a study's store, opened on its runs (127.0.0.1 only)")
    ui.add_argument("study", nargs="?", default=None,
                    help="study folder, or a study name under results/studies (default: experts-sweep)")
    ui.add_argument("--port", type=int, default=5000, help="the port on 127.0.0.1 (default 5000)")
    ui.add_argument("--no-browser", action="store_true", help="print the link only")
    ui.set_defaults(func=cmd_ui)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sbmoe", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sbmoe-ray {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    from sbmoe_ray.derive.command import add_derive_parser
    from sbmoe_ray.export.command import add_export_parser

    for add in (_study_parser, _evaluate_parser, _train_and_report_parsers, add_export_parser, add_derive_parser):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except SbmoeError as exc:
        print(f"sbmoe: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
