"""Markdown tables of the report: the one renderer, and the per-collection rows of an answer."""

from __future__ import annotations

import math
from typing import Any

from sbmoe_ray.analysis.summary import Answer, StageSummary

COLUMNS = ("collection", "base", "sb-moe", "Δ", "95% CI", "p adj", "detectable", "verdict")


def interval(low: float, high: float) -> str:
    return "n/a" if math.isnan(low) else f"[{low:+.3f}, {high:+.3f}]"


def markdown_table(rows: list[dict[str, Any]], header: list[str]) -> list[str]:
    """Rows as a markdown table (floats with 4 decimals)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(f"{row[h]:.4f}" if isinstance(row.get(h), float) else str(row.get(h, ""))
                                      for h in header) + " |" for row in rows]


def collection_rows(summary: StageSummary, answer: Answer, datasets: list[str], claimed: set[str] = frozenset()
                    ) -> list[dict[str, Any]]:
    """One base model's rows, one per test collection: Δ nDCG@10 with its interval (queries and seeds together),
    adjusted p, the minimum detectable effect and the verdict (TOST p and the query-only interval of the paper's
    paired t-test are in ``summary.json``); a collection outside the primary claim says so."""
    roles, rows = summary.test_sets, []
    for dataset in datasets:
        c = answer.datasets.get(dataset)
        if c:
            note = " (validated, not zero-shot)" if roles.get(dataset, {}).get("role") == "validated" else ""
            note += " (not in the primary claim)" if claimed and dataset not in claimed else ""
            rows.append({"collection": dataset, "base": c.baseline_mean, "sb-moe": c.moe_mean,
                         "Δ": c.delta, "95% CI": interval(c.ci_low, c.ci_high), "p adj": c.p_adjusted,
                         "detectable": c.mde, "verdict": c.verdict.split(" (detectable")[0] + note})
    return rows


def answer_tables(summary: StageSummary, datasets: list[str], claimed: dict[str, set[str]] | None = None) -> list[str]:
    """Per base model: what validation prefers and the configuration it chose, then one row per collection."""
    lines = []
    for answer in summary.per_base_model:
        chosen = answer.chosen
        why = " (SB-MoE's lead is within the validation noise: the simpler arm)" if answer.within_noise else ""
        rows = collection_rows(summary, answer, datasets, (claimed or {}).get(answer.base_model, set()))
        lines += [f"**{answer.base_model}**: validation prefers {answer.preferred}{why}; chosen "
                  f"`{chosen.config}`, {len(chosen.seeds)} seed(s).", "", *markdown_table(rows, list(COLUMNS)),
                  ""]
    return lines
