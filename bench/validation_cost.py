"""What one validation costs a Ray Train worker, before and after issue 22's change (item 7: a converged
stage-2 trial validates every epoch, and on a 2-core CPU validation took ~55 s of a ~145 s MiniLM epoch).

Before, every worker embedded every held-out pair's query and passage for the loss, then the held-out queries
and the positives again, with ``validation_retrieval_docs`` sampled documents, for nDCG@10. Now each held-out
query and positive is embedded once, and each of W workers embeds every W-th text (the others gather it).
One worker's part of each, timed in one process at one thread (a worker's CPU in stage 2; with 2 workers
the other worker runs its half on the other core at the same time), MiniLM on SciFact's held-out queries
(``validation_fraction: 0.2``) with 500 sampled documents, both ways interleaved over rounds:

    python bench/validation_cost.py [--workers 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from train_throughput import settings

from sbmoe_ray.model.bi_encoder import ModelConfig
from sbmoe_ray.train import TrainConfig, resolved
from sbmoe_ray.train.routes import ROUTES
from sbmoe_ray.train.validation import _embed, _retrieval_sample


def texts_before(data, cfg) -> tuple[list[str], list[str]]:
    """The queries and passages one worker embedded per validation before: the pairs', then nDCG@10's."""
    positives = sorted({d for _, d in data.validation})
    queries = [q for q, _ in data.validation] + sorted({q for q, _ in data.validation})
    return queries, [d for _, d in data.validation] + positives + _retrieval_sample(data, cfg, positives)


def texts_now(data, cfg, workers: int) -> tuple[list[str], list[str]]:
    """Worker 0's share now: every W-th held-out query, positive and sampled document, each once."""
    positives = sorted({d for _, d in data.validation})
    queries = sorted({q for q, _ in data.validation})
    return queries[::workers], positives[::workers] + _retrieval_sample(data, cfg, positives)[::workers]


def timed(model, data, cfg, texts: tuple[list[str], list[str]]) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        _embed(model, texts[0], data.query_input, cfg, torch.device("cpu"))
        _embed(model, texts[1], data.passage_input, cfg, torch.device("cpu"))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    from sbmoe_ray.runtime.hardware import describe_machine

    torch.set_num_threads(1)
    cfg = resolved(settings(TrainConfig(model=ModelConfig(base_model="minilm", num_experts=0, max_length=256)),
                            train_dataset="scifact", validation_fraction=0.2, validation_retrieval_docs=500,
                            precision="auto", data_dir=args.data_dir, num_workers=1))
    route = ROUTES["live"]
    data, model = route.inputs(cfg, torch.device("cpu")), route.model(cfg).eval()
    before, now = texts_before(data, cfg), texts_now(data, cfg, args.workers)
    print(f"machine: {describe_machine()}; one thread; {cfg.memory.precision}; held-out: {len(data.validation)} "
          f"pairs; texts a worker embeds: before {len(before[0])} queries + {len(before[1])} passages, now "
          f"{len(now[0])} + {len(now[1])} (1 of {args.workers} workers)", flush=True)
    times: dict[str, list[float]] = {"before": [], "now": []}
    for _ in range(args.rounds):
        times["before"].append(timed(model, data, cfg, before))
        times["now"].append(timed(model, data, cfg, now))
    b, n = statistics.median(times["before"]), statistics.median(times["now"])
    print(f"   one validation, one worker: before {b:.1f} s, now {n:.1f} s: {b / n:.2f}x", flush=True)


if __name__ == "__main__":
    main()
