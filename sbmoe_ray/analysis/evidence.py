"""What the evidence that remains supports, per claim, and what would settle what it does not.

A budget trades breadth, never depth (:mod:`sbmoe_ray.stages.budget`): a small machine runs fewer arms,
seeds and configurations, each trained to convergence. Each claim the report could make then either has its
evidence or does not, and the reader should see which, and what it would take: the proxy check needs at
least 5 configurations for an exact p below 0.05; an interval over seeds needs at least 3 seeds per arm;
crediting the experts needs the dense adapter. Costs come from the plan's own measurements on this machine.
"""

from __future__ import annotations

from sbmoe_ray.analysis.agreement import ProxyCheck
from sbmoe_ray.analysis.inference import MIN_SEEDS
from sbmoe_ray.analysis.summary import StageSummary


def _minutes(plan: dict | None, model: str, trials: int) -> str:
    costs = (plan or {}).get("costs", {}).get(model)
    return f", ~{trials * costs['trial_s'] / 60:.0f} min more of training here" if costs else ""


def evidence_lines(summary: StageSummary, agreement: dict[str, ProxyCheck], plan: dict | None,
                   training_seeds: dict[str, list[int]]) -> list[str]:
    """One line per base model and kind of claim whose evidence is missing, with what would settle it."""
    lines = []
    seeds = len(training_seeds.get("confirmation") or training_seeds.get("selection") or [])
    for answer in summary.per_base_model:
        model = answer.base_model
        if seeds < MIN_SEEDS:
            lines.append(f"- {model}: no interval over seeds ({seeds} seed(s) per arm, {MIN_SEEDS} needed): set "
                         f"finetune.confirm_seeds: {MIN_SEEDS} (budget_minutes: null or a larger budget"
                         f"{_minutes(plan, model, 2 * (MIN_SEEDS - seeds))}), or run the paper_grade preset")
        check = agreement.get(model)
        if check is not None and check.configurations < 5:
            lines.append(f"- {model}: proxy check not settled ({check.configurations} configurations, "
                         f"5 needed for p < 0.05): raise finetune.controls or the budget"
                         f"{_minutes(plan, model, 5 - check.configurations)}")
        credit = summary.attribution.get(model, {}).get("credit", {})
        if any("no dense-adapter control" in text for text in credit.values()):
            lines.append(f"- {model}: a gain cannot be credited to the experts without the dense adapter: keep "
                         f"finetune.attribution: [dense_adapter, ...] within the budget"
                         f"{_minutes(plan, model, max(seeds, 1))}")
    return ["What the remaining evidence cannot settle, and what would:", "", *lines, ""] if lines else []


def not_run_lines(reason: str) -> list[str]:
    """The report's stage-2 section when the budget could not hold even the least stage 2."""
    return ["", "## Stage 2: not run", "",
            f"{reason[0].upper()}{reason[1:]}.",
            "", "So nothing here is about fine-tuning: the answer above is stage 1's (frozen encoder, trained heads), "
            "the proxy is not checked against fine-tuning, no attribution control ran, and no configuration was "
            "confirmed on fresh seeds."]


def confirmation_line(seeds: dict[str, list[int]]) -> str:
    """Which replicates the test numbers below come from."""
    if not seeds.get("confirmation"):
        return ("Tested: the replicates stage 2 chose on (training seeds "
                f"{seeds.get('selection')}); not confirmed on fresh seeds, so their luck in validation may carry "
                "into the test Δ (set finetune.confirm_seeds).")
    fraction = seeds.get("train_fraction", 1.0)
    sample = (f"; each replicate trained on {fraction:.0%} of the training queries, drawn by its seed (the same draw "
              "for every arm), so a seed varies the training sample too" if fraction < 1 else "")
    return (f"Tested: the chosen configuration, the baseline and the controls trained again on fresh seeds "
            f"{seeds['confirmation']}, never used for selection (stage 2 chose on seeds {seeds['selection']})"
            f"{sample}.")
