"""The method, last: the test sets' roles, the identical-id rule, and per stage its budget, how Δ is tested, the
A/A sanity check and what the per-collection family lets the report say."""

from __future__ import annotations

from sbmoe_ray.analysis.records import TrialRecord
from sbmoe_ray.analysis.summary import StageSummary
from sbmoe_ray.analysis.test_sets import role_line


def budget_line(summary: StageSummary) -> str:
    b = summary.budget
    steps = (f" (at most {b['steps_cap']} optimizer steps; trials ran {b['steps_run']['min']}-{b['steps_run']['max']})"
             if b.get("steps_cap") else "")
    return (f"Budget: {b['configurations']} configurations (baselines included) x {b['seeds']} seed(s) = "
            f"{b['trials']} trials of {'at most ' if steps else ''}{b['epochs']} epoch(s) each{steps}.")


def aa_line(summary: StageSummary) -> str:
    """The A/A sanity check: how often each test rejects replicate i against replicate j of one configuration
    (another null than the answer's; the answer's test size is simulated: :mod:`sbmoe_ray.analysis.simulation`)."""
    aa = summary.aa_check
    if not aa or not aa["pairs"]:
        return "A/A check: no configuration has two replicates."
    return (f"A/A check ({aa['pairs']} pairs of replicates of the same configuration, every configuration and test "
            f"set, where every rejection is false): at α = {aa['alpha']:g} the combined test rejects "
            f"{aa['combined_rate']:.1%}, the query-only paired t-test {aa['query_only_rate']:.1%}.")


def surviving(summary: StageSummary) -> str:
    """One paragraph: the method, the A/A sanity check, and what the secondary family lets the report say."""
    alpha, claims = summary.alpha, []
    for a in summary.per_base_model:
        for d, c in a.datasets.items():
            claims.append(f"{a.base_model} on {d}: {c.verdict} (Δ {c.delta:+.3f})")
    unestimated = any("not estimated" in c for c in claims)
    return (f"{budget_line(summary)} Method: {summary.method}. {aa_line(summary)} Per-collection family "
            f"(secondary to the primary claim): the chosen SB-MoE configuration per base model on every test "
            f"set ({summary.confirmatory} comparisons, α = {alpha:g}); every other comparison is "
            "exploratory. "
            + ("; ".join(claims) if claims else "No comparison") + "."
            + (" Where the seed variance is not estimated nothing is claimed: the query intervals alone ignore "
               "how much another training run moves Δ." if unestimated else ""))


def identical_ids_line(records: list[TrialRecord]) -> str:
    """How each test set treated a retrieved document whose id is the query's (from the trials' results)."""
    rules = {r["dataset"]: r.get("identical_ids", {}) for record in records for r in record.test}
    parts = [f"`{name}` {rule.get('rule', 'drop (0.1)')}, {rule.get('queries', 'all')} queries"
             for name, rule in sorted(rules.items())]
    return ("Identical-id rule (a retrieved document whose id is the query's is dropped only for queries that "
            "are corpus documents, same id and same text; `auto` decides from the data): " + "; ".join(parts) + ".")


def method_section(study, proxy, finetune) -> list[str]:
    """The method of each stage that ran, and the test sets' roles."""
    lines = ["## Method", ""]
    if proxy.records:
        lines += [role_line(proxy.summary.test_sets, study.train.data.zero_shot_validation), "",
                  identical_ids_line(proxy.records), ""]
    if finetune is not None:
        lines += [f"Stage 2. {surviving(finetune.summary)}", ""]
    if proxy.records:
        lines += [f"Stage 1. {surviving(proxy.summary)}", ""]
    return lines
