"""The second plan of stage 2, made after its selection from what the selection measured.

The first plan (:mod:`sbmoe_ray.stages.budget`) forecasts every run at its epoch cap; most stop sooner on
their patience. Once the selection has run, :func:`plan_confirmation` looks again with a selection trial's
measured wall time and the time left: the attribution controls the first plan dropped are re-admitted, the
one that decides attribution first (the dense adapter), while the confirmation and its test phase still fit.
It is written once (``<study>/finetune/confirm_plan.json``), read back on resume, and says what it re-admitted.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sbmoe_ray.analysis.records import TrialRecord
from sbmoe_ray.analysis.result import stage_seconds
from sbmoe_ray.stages.budget import BudgetPlan, ModelCosts, load_or_plan, named
from sbmoe_ray.study.arms import is_arm, labels
from sbmoe_ray.study.config import StudyConfig
from sbmoe_ray.study.points import Promotion


@dataclass
class ConfirmationPlan:
    """The attribution controls re-admitted for the confirmation, from the selection's measured trials."""
    spent_s: float
    trial_s: dict[str, float]             # per base model: a selection trial's wall time, measured
    admitted: list[Promotion]
    dropped: list[Promotion]              # still dropped
    estimate_s: float                     # the confirmation and its test phase, with what was admitted

    def summary_line(self) -> str:
        took = ", ".join(f"{m} {s / 60:.1f} min" for m, s in sorted(self.trial_s.items()))
        head = (f"[plan] before confirmation: {self.spent_s / 60:.1f} min spent, a selection trial measured at "
                f"{took}; the confirmation and its test phase estimated {self.estimate_s / 60:.1f} min")
        back = "; ".join(named(e) for e in self.admitted)
        gone = "; ".join(named(e) for e in self.dropped)
        return head + (f"; re-admitted: {back}" if back else "") + (f"; still dropped: {gone}" if gone else "")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "admitted": [e.to_dict() for e in self.admitted],
                "dropped": [e.to_dict() for e in self.dropped]}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ConfirmationPlan:
        return cls(**{**values, "admitted": [Promotion.from_dict(e) for e in values["admitted"]],
                      "dropped": [Promotion.from_dict(e) for e in values["dropped"]]})


def plan_confirmation(plan: BudgetPlan, selection_s: dict[str, float], spent_s: float) -> ConfirmationPlan:
    """Re-admit the attribution controls ``plan`` dropped, most needed first, while the confirmation (the
    chosen configuration, the baseline and the controls, ``plan.confirm_seeds`` each) and its test phase fit
    the budget; ``selection_s``: a selection trial's measured wall seconds per base model."""
    costs = {m: ModelCosts(**c) for m, c in plan.costs.items()}
    trial_s = {m: selection_s.get(m, costs[m].trial_s) for m in costs}
    # tested per base model still in stage 2: its chosen configuration, its baseline, its attribution controls
    models = {e.base_model for e in plan.kept}
    kept = {m: 2 + sum(e.base_model == m and is_arm(e.role) for e in plan.kept) for m in models}

    def estimate(tested: dict[str, int]) -> float:
        return sum(n * plan.confirm_seeds * (trial_s[m] + costs[m].test_s / max(1, plan.cores // costs[m].eval_threads))
                   for m, n in tested.items())

    waiting = [e for e in plan.dropped if is_arm(e.role)]
    waiting.sort(key=lambda e: -labels()[e.role].drop_rank)              # the last the budget drops: first back
    admitted, dropped = [], []
    for entry in waiting:
        trial = {**kept, entry.base_model: kept.get(entry.base_model, 0) + 1}
        if entry.base_model in kept and spent_s + estimate(trial) <= plan.budget_s:
            kept, admitted = trial, admitted + [entry]
        else:
            dropped.append(entry)
    return ConfirmationPlan(spent_s, trial_s, admitted, dropped, estimate(kept))


def read_confirmation_plan(path: Path) -> ConfirmationPlan | None:
    """The second plan a study wrote, else None."""
    return ConfirmationPlan.from_dict(json.loads(path.read_text())) if path.is_file() else None


def confirmation_plan(study: StudyConfig, plan: BudgetPlan | None, records: list[TrialRecord],
                      started: float) -> ConfirmationPlan | None:
    """After the selection: the attribution controls the first plan dropped, re-admitted where the selection's
    measured trials say they fit (made once, read back on resume); None when there is nothing to re-admit."""
    if plan is None or not plan.confirm_seeds or not any(is_arm(e.role) for e in plan.dropped):
        return None
    path = study.layout.confirm_plan_file
    if not path.is_file() and not records:
        return None

    def measured() -> ConfirmationPlan:
        models = {r.params.get("base_model") for r in records}
        per_trial = {m: stage_seconds(own) / len(own) for m in models
                     if (own := [r for r in records if r.params.get("base_model") == m])}
        return plan_confirmation(plan, {m: s for m, s in per_trial.items() if s == s}, time.monotonic() - started)

    confirm = load_or_plan(path, measured, ConfirmationPlan)
    if confirm.admitted or confirm.dropped:
        print(confirm.summary_line(), flush=True)
    return confirm


def with_admitted(entries: list[Promotion], confirm: ConfirmationPlan | None) -> list[Promotion]:
    """Stage 2's entries and the controls the confirmation's plan re-admitted."""
    return entries + (confirm.admitted if confirm else [])
