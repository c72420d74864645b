"""The ``evaluation`` section of a training config: how test corpora are encoded and searched.

Small corpora (SciFact, NFCorpus) are encoded in one process and searched with a flat FAISS index
(:mod:`sbmoe_ray.evaluation.dense`). The paper's zero-shot collections reach 5.4M documents (Sokli et al.
2025, arXiv 2510.15683): with ``sharded`` they are encoded in shard files by Ray tasks and searched shard
by shard (:mod:`sbmoe_ray.evaluation.sharded`). Kept free of torch: a config answers in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

from sbmoe_ray.config import ConfigBase
from sbmoe_ray.limits import non_negative_int, one_of, positive_int, setting

INDEX_KINDS = ("auto", "flat", "hnsw", "ivf")   # flat: exact; auto: by corpus size (sharded.search.choose_index)


@dataclass
class EvaluationConfig(ConfigBase):
    """How large corpora are tested (:mod:`sbmoe_ray.evaluation.sharded.evaluate`): encoded in shard files by Ray
    tasks, W
    at a time (resumable shard by shard), and searched exactly shard by shard in bounded memory, or with
    an approximate index whose recall@100 against exact search is measured and reported."""

    sharded: bool = False                   # every encoded test corpus in shards (large_test_datasets always)
    encode_workers: int = setting(0, non_negative_int)   # shard tasks in flight; 0 = scaling.num_workers
    shard_rows: int = setting(50_000, positive_int)      # documents per shard file (BEIR's chunk size)
    index: str = setting("flat", one_of(*INDEX_KINDS))   # flat: exact; auto: by corpus size
    recall_queries: int = setting(100, positive_int)     # approximate index: recall@100 measured on these
    search_memory_mb: int = setting(1024, positive_int)  # bound of one search process's blocks and lists
