"""Sharded encoding throughput: documents per second against the number of Ray workers.

Encodes one corpus with the base model (no head) through ``sbmoe_ray/evaluation/sharded/encode.py`` with W workers of
``--cpus`` CPUs each, for each W in ``--workers``, into a fresh folder each time (cold: every shard
encoded), and prints docs/s. On a 2-core machine W = 1 x 2 CPUs and W = 2 x 1 CPU use the same cores:
the ratio shows the cost of splitting, not a speed-up; on GPUs give ``--gpu`` and W up to the GPU count.

    python bench/encode_sharded.py [--dataset scifact] [--model minilm] [--workers 1,2] [--cpus 1]
                                   [--shard-rows 1000] [--precision auto] [--gpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from sbmoe_ray.data.root import data_root, locate_dataset
from sbmoe_ray.evaluation.checkpoint import LiveEvaluation
from sbmoe_ray.evaluation.dense import EncodeSettings
from sbmoe_ray.evaluation.sharded.encode import encode_sharded
from sbmoe_ray.model.config import ModelConfig
from sbmoe_ray.runtime.hardware import machine
from sbmoe_ray.runtime.precision import resolve_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--cpus", type=float, default=1.0, help="CPUs per worker")
    parser.add_argument("--shard-rows", type=int, default=1000)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--gpu", action="store_true")
    args = parser.parse_args()
    print(machine())
    device = "cuda" if args.gpu else "cpu"
    precision = resolve_precision(args.precision, device)
    evaluation = LiveEvaluation(ModelConfig(base_model=args.model, num_experts=0, max_length=256),
                                EncodeSettings(batch_size=32, max_length=256, precision=precision, device=device,
                                               progress=False))
    corpus = locate_dataset(args.dataset, data_root(None)) / "corpus.jsonl"
    print("| workers x CPUs | docs | seconds | docs/s |\n|---|---|---|---|")
    for workers in (int(w) for w in args.workers.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            sharded = encode_sharded(evaluation, None, corpus, Path(tmp), workers=workers,
                                     shard_rows=args.shard_rows, cpus_per_worker=args.cpus, use_gpu=args.gpu)
            seconds = time.perf_counter() - start
            rows = sharded.manifest["rows"]
            print(f"| {workers} x {args.cpus:g} | {rows} | {seconds:.1f} | {rows / seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
