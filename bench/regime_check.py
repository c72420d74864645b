"""Does the rung change the answer? Plain fine-tuning, an SB-MoE configuration and the dense adapter, each trained
at depth 1, 2 and all (``optim.trained_layers``) with the stage-2 settings of the default study, tested on SciFact.

Per rung: each arm's test nDCG@10, the Δ of SB-MoE and of the dense adapter against plain fine-tuning, and the
order of the three arms. One seed per cell (what a CPU affords): it shows whether the order of the arms moves
with the depth by more than the seed-to-seed spread the study measures, not that it does not move at all. Run it
before trusting a CPU rung's answer on a GPU cluster (the GPU guide says so); take the SB-MoE configuration from
your study's report (``--experts``, ``--top-k``, ``--moe-lr``).

    python bench/regime_check.py --experts 3 --top-k 1 --moe-lr 1e-3 [--depths 1 2 all] [--epochs 8]
        [--out results/regime-check] [--test scifact] [--gpu] [--cache-dir results/studies/embedding_cache]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from sbmoe_ray.model.bi_encoder import ModelConfig
from sbmoe_ray.train import TrainConfig, fit
from sbmoe_ray.train.config import DataConfig, MemoryConfig, OptimConfig, RunConfig, ScalingConfig


def arms(args) -> dict[str, dict]:
    inference = {"inference_top_k": "all"} if args.inference == "all" else {}
    return {"plain": {"num_experts": 0}, "sb-moe": {"num_experts": args.experts, "top_k": args.top_k, **inference},
            "dense adapter": {"num_experts": 1, "top_k": 1}}


def config(arm: dict, depth, args) -> TrainConfig:
    """The default study's stage-2 settings (its preset experts_sweep) for one arm at one depth."""
    depth = depth if depth == "all" else int(depth)
    name = f"{'-'.join(f'{k[:3]}{v}' for k, v in arm.items())}-d{depth}-s{args.seed}"
    return TrainConfig(
        model=ModelConfig(base_model="minilm", **arm),
        data=DataConfig(train_dataset="scifact", test_datasets=args.test, validation_fraction=0.2,
                        validation_part="selection", validation_retrieval_docs=500),
        optim=OptimConfig(epochs=args.epochs, patience=2, warmup_steps=5, schedule="linear", batch_size=64,
                          encoder_lr=args.encoder_lr, moe_lr=args.moe_lr, trained_layers=depth),
        scaling=ScalingConfig(num_workers=1, cpus_per_worker=2.0, use_gpu=args.gpu),
        memory=MemoryConfig(cache_dir=args.cache_dir),
        run=RunConfig(name=name, storage_path=str(Path(args.out).resolve()), seed=args.seed))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experts", type=int, required=True)
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--inference", choices=("top_k", "all"), default="top_k", help="experts active at inference")
    parser.add_argument("--moe-lr", type=float, required=True)
    parser.add_argument("--encoder-lr", type=float, default=2e-5)
    parser.add_argument("--depths", nargs="+", default=["1", "2", "all"])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--test", nargs="+", default=["scifact"])
    parser.add_argument("--out", default="results/regime-check")
    parser.add_argument("--gpu", action="store_true", help="train and test on the first CUDA device")
    parser.add_argument("--cache-dir", default=None, help="a study's embedding cache to reuse (its states are shared)")
    args = parser.parse_args()
    cells = []
    for depth in args.depths:
        for name, arm in arms(args).items():
            started = time.monotonic()
            fitted = fit(config(arm, depth, args))
            cells.append({"depth": depth, "arm": name, "minutes": (time.monotonic() - started) / 60,
                          "epochs": len(fitted.history), "best_epoch": fitted.best_metrics.get("epoch"),
                          "val_loss": fitted.best_metrics.get("val_loss"),
                          **{f"{t.dataset} ndcg@10": t.metrics.means["ndcg@10"] for t in fitted.test}})
            print(json.dumps(cells[-1]), flush=True)
            Path(args.out).mkdir(parents=True, exist_ok=True)          # kept cell by cell: a stopped run keeps its cells
            (Path(args.out) / "regime_check.json").write_text(json.dumps({"args": vars(args), "cells": cells}, indent=2))
    metric = f"{args.test[0]} ndcg@10"
    print(f"\nmachine: {platform.processor() or platform.machine()}, {torch.backends.cpu.get_cpu_capability()}; "
          f"one seed ({args.seed}) per cell; {metric}")
    print("| depth | plain | sb-moe | dense adapter | Δ sb-moe | Δ dense adapter | order |")
    print("|---|---|---|---|---|---|---|")
    for depth in args.depths:
        row = {c["arm"]: c[metric] for c in cells if c["depth"] == depth}
        if len(row) < 3:
            continue
        order = " > ".join(sorted(row, key=row.get, reverse=True))
        print(f"| {depth} | {row['plain']:.4f} | {row['sb-moe']:.4f} | {row['dense adapter']:.4f} | "
              f"{row['sb-moe'] - row['plain']:+.4f} | {row['dense adapter'] - row['plain']:+.4f} | {order} |")


if __name__ == "__main__":
    main()
