"""Training pairs split by query: the held-out validation queries (never a pair of a query on both sides),
and the two disjoint halves of them a two-stage study uses (stage 1 promotes on one, stage 2 ranks on the
other, so stage 2 is not chosen on the queries that promoted its candidates)."""

from __future__ import annotations

import random

from sbmoe_ray.errors import DataError


def split_by_query(pairs: list[tuple[str, str]], validation_fraction: float,
                   seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Deterministic train/validation split that keeps all pairs of a query on the same side."""
    if not 0.0 <= validation_fraction < 1.0:
        raise DataError(f"validation_fraction={validation_fraction!r}: allowed range is [0, 1)")
    query_ids = sorted({qid for qid, _ in pairs})
    random.Random(seed).shuffle(query_ids)
    n_validation = round(validation_fraction * len(query_ids))
    if validation_fraction > 0 and len(query_ids) > 1:
        n_validation = min(max(n_validation, 1), len(query_ids) - 1)
    held_out = set(query_ids[:n_validation])
    train = [p for p in pairs if p[0] not in held_out]
    validation = [p for p in pairs if p[0] in held_out]
    return train, validation


def validation_half(pairs: list[tuple[str, str]], part: str, seed: int) -> list[tuple[str, str]]:
    """The pairs of one of two disjoint halves of the held-out queries (``promotion``: the first, larger
    half of a seeded shuffle; ``selection``: the rest), or all of them (``all``)."""
    if part == "all":
        return pairs
    query_ids = sorted({qid for qid, _ in pairs})
    random.Random(f"{seed}:halves").shuffle(query_ids)
    first = set(query_ids[: (len(query_ids) + 1) // 2])
    return [p for p in pairs if (p[0] in first) == (part == "promotion")]


def subsample_queries(pairs: list[tuple[str, str]], fraction: float, seed: int) -> list[tuple[str, str]]:
    """The pairs of a ``fraction`` of the queries (all pairs of each kept query), drawn by ``seed``; all at 1.
    Without replacement: a bootstrap would put a pair twice into one batch, where it is its own in-batch
    negative."""
    if fraction >= 1.0:
        return pairs
    query_ids = sorted({qid for qid, _ in pairs})
    kept = set(random.Random(f"{seed}:subsample").sample(query_ids, max(1, round(fraction * len(query_ids)))))
    return [p for p in pairs if p[0] in kept]
