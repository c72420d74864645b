"""The plan on paper: what testing one model on MS MARCO + the paper's 13 BEIR collections costs, from
measured per-document encoding and per-query search rates, on N workers.

Encoding: documents / (workers x docs/s per worker); search: exact sharded search, which scales with
queries x documents (``bench/search_scale.py`` measures it for 1M documents and 100 queries). Rates are
per worker as ``bench/encode_sharded.py`` measures them (W workers add up to ~0.9 W on one machine here).

    python bench/plan_large_eval.py --docs-per-s 56 --search-s 1.66 --workers 1,2,16,32

Prints per collection and in total; the inputs are the caller's measurements (docs/results/2026-12-02-benchmarks.md says which).
"""

from __future__ import annotations

import argparse

from sbmoe_ray.data.collections import BEIR_13, BEIR_13_QUERIES, MSMARCO


def rows() -> list[tuple[str, int, int]]:
    """(name, documents, test queries), MS MARCO first, then the 13 smallest first."""
    return [("msmarco (dev)", MSMARCO["documents"], MSMARCO["queries"])] + \
        [(n, BEIR_13[n], BEIR_13_QUERIES[n]) for n in sorted(BEIR_13, key=BEIR_13.get)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs-per-s", type=float, required=True, help="encoding rate of one worker (measured)")
    p.add_argument("--search-s", type=float, required=True, help="seconds of exact search per 100 queries x 1M docs")
    p.add_argument("--workers", default="1,2,16,32")
    a = p.parse_args()
    workers = [int(w) for w in a.workers.split(",")]
    print("| collection | documents | queries | exact search (2 cores) | " +
          " | ".join(f"encode, {w} worker(s)" for w in workers) + " |")
    print("|---|---|---|---|" + "---|" * len(workers))
    total_docs = total_search = 0.0
    for name, docs, queries in rows():
        search = a.search_s * queries / 100 * docs / 1e6
        total_docs, total_search = total_docs + docs, total_search + search
        print(f"| {name} | {docs:,} | {queries:,} | {search / 60:.1f} min | " +
              " | ".join(f"{docs / (w * a.docs_per_s) / 3600:.2f} h" for w in workers) + " |")
    print(f"| **total** | **{total_docs:,.0f}** | | **{total_search / 60:.0f} min** | " +
          " | ".join(f"**{total_docs / (w * a.docs_per_s) / 3600:.1f} h**" for w in workers) + " |")


if __name__ == "__main__":
    main()
