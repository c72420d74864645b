"""Two encodings side by side on a 2-core CPU: each with 2 threads (4 threads on 2 cores, what the test
phase did when Ray's logical CPUs outnumbered the cores) against each with 1 thread, and one alone.

    python bench/oversubscription.py [--docs 600]

Ratios within one run; name the machine (printed) with any figure.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time


def encode(threads: int, docs: int, queue) -> None:
    import torch

    from sbmoe_ray.data.beir import load_dataset
    from sbmoe_ray.evaluation.dense import EncodeSettings
    from sbmoe_ray.evaluation.dense import encode as run_encode
    from sbmoe_ray.model.backbones import load_tokenizer
    from sbmoe_ray.model.bi_encoder import build_bi_encoder
    from sbmoe_ray.model.config import ModelConfig

    torch.set_num_threads(threads)
    dataset = load_dataset("scifact", "test")
    texts = [d.full_text for d in list(dataset.corpus.values())[:docs]]
    model = build_bi_encoder(ModelConfig(base_model="minilm", num_experts=0).resolved())
    tokenizer = load_tokenizer("minilm")
    run_encode(model, tokenizer, texts[:32], EncodeSettings(progress=False))        # warm-up
    start = time.perf_counter()
    run_encode(model, tokenizer, texts, EncodeSettings(progress=False))
    queue.put(time.perf_counter() - start)


def side_by_side(jobs: int, threads: int, docs: int) -> float:
    queue = mp.get_context("spawn").Queue()
    procs = [mp.get_context("spawn").Process(target=encode, args=(threads, docs, queue)) for _ in range(jobs)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return time.perf_counter() - start


if __name__ == "__main__":
    from sbmoe_ray.runtime.hardware import describe_machine

    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=600)
    args = parser.parse_args()
    print(describe_machine())
    for jobs, threads in ((1, 2), (2, 2), (2, 1)):
        wall = side_by_side(jobs, threads, args.docs)
        print(f"{jobs} encoding(s) of {args.docs} SciFact docs, {threads} thread(s) each: {wall:.1f} s wall, "
              f"{jobs * args.docs / wall:.1f} docs/s in all", flush=True)
