"""Search at scale on synthetic embeddings: sharded exact search vs one flat index vs HNSW and IVF.

Clustered unit vectors (as embeddings are; uniform random ones are the worst case for approximate
indexes), written as shard files, then for ``--queries`` queries at k = 100:

* sharded exact search (``sbmoe_ray/evaluation/sharded/search.py``) under ``--memory-mib``: time, peak of its own
  allocations (tracemalloc), and equality with the flat index;
* FAISS flat, HNSW and IVF indexes (built in memory): build time, search time, resident memory added
  by the index (RSS), recall@100 against exact search.

    python bench/search_scale.py [--n 1000000] [--dim 384] [--kinds flat,hnsw,ivf] [--memory-mib 256]

Prints the machine (CPU model, flags, threads) first: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from sbmoe_ray.evaluation.sharded.search import ShardedCorpus, build_index, exact_topk, recall_at_k, write_shards
from sbmoe_ray.runtime.hardware import machine


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def clustered(rng, n: int, dim: int, centres: np.ndarray) -> np.ndarray:
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        noise = rng.standard_normal((m, dim), dtype=np.float32)
        block = centres[rng.integers(0, len(centres), m)] + 0.3 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
        out[start: start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--kinds", default="flat,hnsw,ivf")
    parser.add_argument("--memory-mib", type=int, default=256)
    parser.add_argument("--shard-rows", type=int, default=250_000)
    args = parser.parse_args()
    print(machine())
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, args.dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors, queries = clustered(rng, args.n, args.dim, centres), clustered(rng, args.queries, args.dim, centres)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        corpus = ShardedCorpus(write_shards(Path(tmp), [str(i) for i in range(args.n)], vectors, args.shard_rows))
        print(f"{args.n:,} x {args.dim} vectors ({vectors.nbytes / 2**30:.2f} GiB) written as "
              f"{len(corpus.manifest['shards'])} shards in {time.perf_counter() - start:.1f} s")
        tracemalloc.start()
        start = time.perf_counter()
        exact_scores, exact_rows = exact_topk(corpus, queries, 100, memory_bytes=args.memory_mib * 2**20)
        seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"sharded exact: {seconds:.2f} s for {args.queries} queries, peak {peak / 2**20:.0f} MiB "
              f"(setting {args.memory_mib} MiB)")
    print("| index | build s | search s | added RSS MiB | recall@100 vs exact |")
    print("|---|---|---|---|---|")
    for kind in args.kinds.split(","):
        before = rss_mib()
        start = time.perf_counter()
        index = build_index(kind, vectors)
        built = time.perf_counter() - start
        start = time.perf_counter()
        _, rows = index.search(queries, 100)
        searched = time.perf_counter() - start
        print(f"| {kind} | {built:.1f} | {searched:.3f} | {rss_mib() - before:.0f} | "
              f"{recall_at_k(rows, exact_rows, 100):.4f} |", flush=True)
        del index
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")


if __name__ == "__main__":
    main()
