"""The report's first screen: the study's title and regime, the primary claim in one sentence with its numbers,
then the claim's detail and each collection's result (secondary). A reader who stops here has the answer: does
SB-MoE help, by how much, how sure, and what the design could have seen. The terminal's last lines
(:func:`terminal_answer`) and the exported model's card say the same sentence."""

from __future__ import annotations

import textwrap

from sbmoe_ray.analysis.primary import PrimaryClaim, claim_lines
from sbmoe_ray.analysis.sections.tables import answer_tables
from sbmoe_ray.analysis.simulation import RejectionRate
from sbmoe_ray.analysis.summary import StageSummary


def verdict_words(verdict: str) -> str:
    """A claim's verdict as the sentence says it."""
    if verdict.startswith("inconclusive"):
        return "no difference shown"
    if verdict in ("better", "worse"):
        return f"SB-MoE is {verdict}"
    return verdict


def claim_sentence(claim: PrimaryClaim, subject: str, against: str) -> str:
    """``On 6 test collections, <subject> changes nDCG@10 by +0.004 [-0.006, +0.014] against <against>: no
    difference shown; the design could have detected ±0.011.``"""
    return (f"On {len(claim.collections)} test collections, {subject} changes nDCG@10 by {claim.delta:+.3f} "
            f"[{claim.low:+.3f}, {claim.high:+.3f}] against {against}: {verdict_words(claim.verdict)}; the "
            f"design could have detected ±{claim.mde:.3f}.")


def sides(finetuned: bool, config: str) -> tuple[str, str]:
    """What the claim compares, as its sentence names it: (the chosen SB-MoE, what it is held against)."""
    if finetuned:
        return f"fine-tuned SB-MoE `{config}`", "plain fine-tuning tuned alike"
    return f"the SB-MoE head `{config}` on the frozen encoder", "the encoder alone"


def regime_line(study, summary: StageSummary, finetuned: bool, claims: list[PrimaryClaim]) -> str:
    """What the answer is about: the depth, the seeds, the collections and how they are pooled."""
    depth = study.depth_label() if finetuned else "stage 1 only: SB-MoE heads on the frozen encoder"
    seeds = summary.training_seeds
    fresh = " (fresh confirmation seeds)" if finetuned and seeds.get("confirmation") else ""
    parts = [f"**{depth[0].upper()}{depth[1:]}**" + (" (every arm)" if finetuned else "")]
    if claims:
        c = claims[0]
        pooled = "a claim about collections like these" if c.pooling == "random" else "about these collections only"
        parts += [f"{c.seeds[0]} vs {c.seeds[1]} seeds{fresh}",
                  f"{len(c.collections)} test collections, {c.pooling} ({pooled})"]
    return "Regime: " + "; ".join(parts) + "."


def first_screen(study, proxy, finetune) -> list[str]:
    """Title, regime, the primary claim per base model, its detail, and the per-collection tables."""
    finetuned = finetune is not None
    summary = (finetune or proxy).summary
    claims, chosen = summary.primary, summary.chosen_configs()
    lines = [f"# Study `{study.name}`", "", regime_line(study, summary, finetuned, claims), "", "## The answer", ""]
    lines += [f"**{claim_sentence(c, *sides(finetuned, chosen.get(c.base_model, '?')))}**"
              + (f" ({c.base_model})" if len(claims) > 1 else "") for c in claims] + ([""] if claims else [])
    if not claims:
        lines += ["No primary claim: no base model had both its chosen SB-MoE configuration and its baseline tested "
                  "on a declared collection.", ""]
    lines += claim_lines(claims)
    datasets = study.final_test_names if finetuned else study.test_names
    if summary.per_base_model:
        lines += [f"### Per collection (secondary: adjusted over {summary.confirmatory} comparisons, "
                  "apart from the primary claim)", "", *answer_tables(summary, datasets, summary.claimed())]
    return lines


def terminal_answer(summary: StageSummary, stage: str, finetuned: bool) -> list[str]:
    """A stage's answer in the terminal: per base model the claim's sentence (wrapped), its p, TOST p and the
    test's simulated size, then per collection Δ, its interval and verdict (secondary), one short row each."""
    lines, claimed, chosen = [f"\n{stage}: the answer"], summary.claimed(), summary.chosen_configs()
    for c in summary.primary:
        sentence = claim_sentence(c, *sides(finetuned, chosen.get(c.base_model, "?")))
        lines += textwrap.wrap(sentence, 110, initial_indent="  ", subsequent_indent="  ")
        size = RejectionRate.from_dict(c.size) if c.size else None
        simulated = (f"; the test's size simulated {size.rate:.1%} [{size.low:.1%}, {size.high:.1%}]"
                     + (f", {size.calibration}" if size.calibration else "")) if size else ""
        lines.append(f"  (p {c.p_adjusted:.3g}, TOST p {c.tost_p_adjusted:.3g}; "
                     f"{c.seeds[0]} vs {c.seeds[1]} seeds{simulated})")
    for answer in summary.per_base_model:
        lines += [f"  {answer.base_model} per collection (secondary): `{answer.chosen.config}` against the "
                  f"baseline,", f"  the configuration chosen by mean {summary.objective}:"]
        lines.append(f"    {'collection':<24} {'base':>6} {'sb-moe':>7} {'Δ':>7}  {'95% CI':<17} verdict")
        for dataset, row in answer.datasets.items():
            outside = "" if dataset in claimed.get(answer.base_model, {dataset}) else " (not in the primary claim)"
            lines.append(f"    {dataset:<24} {row.baseline_mean:6.3f} {row.moe_mean:7.3f} {row.delta:+7.3f}  "
                         f"[{row.ci_low:+.3f}, {row.ci_high:+.3f}]  {row.verdict}{outside}")
    return lines
