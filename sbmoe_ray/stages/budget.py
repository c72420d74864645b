"""Stage 2 sized to a time budget: costs measured on this machine, the plan made once and kept on resume.

Why: a quick start must end within a fixed time (the preset's ``budget_minutes``), but CPUs of one class
differ twofold and more (a 2-core AMD EPYC ran fp32 matrix products at 100 GFLOP/s, an AVX2-capped Xeon
at 228): a fixed stage 2 is too small for one machine or too long for the other. With ``budget_minutes``
the study measures what stage 2 costs here (:mod:`sbmoe_ray.stages.costs`) and, while the estimate
exceeds the time left of the budget, drops stage-2 work, least needed first: replicates beyond the
first, then per base model (in turn) its entries from the end of the order ``promoted #1 at every encoder
rate of the grid, control #1, promoted #2 (every rate), control #2, ...`` (so the rank check keeps a
control as long as it has three configurations), each with one of plain fine-tuning's tuned learning rates (so
that neither arm is tuned more than the other), then the attribution controls (by their table's drop rank:
random routing before the dense adapter, which decides whether a gain is the experts'), then the top
configuration's other rates of the grid with plain fine-tuning's (the arms tuned alike are the last breadth to
go), then confirmation seeds one at a time, then whole base models
(the last listed first: its stage-1 answer stands alone). The first base model's baseline and top
configuration are the least stage 2: when even they (trained to their epoch cap) and their test phase
exceed the time left, stage 2 is not run at all, the answer is stage 1's, and the plan says what budget would
run it. Breadth is traded, never depth: every run kept trains to its declared stopping criterion, and the
report says, per claim, what the dropped runs would have settled.
The plan (costs, estimate, what was dropped) is written once (``<study>/finetune/plan.json``):
a resumed study runs exactly the planned stage 2. The large collections are not in the estimate.

After the selection a second, measured plan may re-admit dropped controls (:mod:`sbmoe_ray.stages.confirm_plan`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sbmoe_ray.stages.costs import ModelCosts, measured_costs
from sbmoe_ray.study.arms import ARMS, by_drop_rank, is_arm, labels
from sbmoe_ray.study.config import StudyConfig
from sbmoe_ray.study.points import Promotion


@dataclass
class BudgetPlan:
    """What stage 2 runs within the budget, and why."""
    budget_s: float
    spent_s: float
    seeds: int
    kept: list[Promotion]
    dropped: list[Promotion]
    estimate_s: dict[str, float]          # stage 2 training, test phase, total with what was spent
    costs: dict[str, dict[str, float]]    # per base model (ModelCosts as a dict)
    cores: int
    dropped_seeds: int | None = None      # the seeds asked for, when replicates beyond the first were dropped
    confirm_seeds: int = 0                # fresh confirmation seeds kept
    dropped_confirm: int | None = None    # the confirmation seeds asked for, when some were dropped

    def summary_line(self) -> str:
        est = self.estimate_s
        head = (f"[plan] budget {self.budget_s / 60:.0f} min, {self.spent_s / 60:.1f} min spent; stage 2 estimated "
                f"{est['training'] / 60:.1f} min training + {est['test'] / 60:.1f} min test phase = "
                f"{est['total'] / 60:.1f} min in all")
        head += f"; {self.confirm_seeds} fresh confirmation seed(s)"
        if not self.dropped and not self.dropped_seeds and not self.dropped_confirm:
            return head + ": everything fits"
        gone = ", ".join(named(e) for e in self.dropped)
        if self.runs_nothing:
            return (f"{head.replace('stage 2 estimated', 'the least stage 2 estimated')}: over the budget, so stage 2 "
                    f"is not run and the answer is stage 1's (the least: the first base model's baseline and top "
                    f"configuration, trained to their epoch cap, and their test phase); to run it here: --set "
                    f"budget_minutes={math.ceil(est['total'] / 60) + 5}, or on GPUs (studies/gpu_cluster.yaml)")
        return head + "; dropped to fit: " + "; ".join(
            ([f"replicates beyond {self.seeds}"] if self.dropped_seeds else []) + ([gone] if gone else [])
            + ([f"confirmation seeds beyond {self.confirm_seeds} (of {self.dropped_confirm})"]
               if self.dropped_confirm else []))

    @property
    def runs_nothing(self) -> bool:
        """Even the least stage 2 exceeds the budget: stage 2 is not run (its estimate is the least's)."""
        return not self.kept

    def not_run(self) -> dict[str, Any]:
        """Why stage 2 did not run, for the report and summary.json."""
        return {"reason": self.summary_line().removeprefix("[plan] "), "plan": self.to_dict()}

    def sentence(self, took_s: float) -> str:
        """The plan against what stage 2 then took, for the report."""
        text = self.summary_line().removeprefix("[plan] ")
        return (f"{text[0].upper()}{text[1:]} (costs measured here before stage 2, spread over {self.cores} cores; "
                f"stage 2 training then took {took_s / 60:.1f} min).")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kept": [e.to_dict() for e in self.kept],
                "dropped": [e.to_dict() for e in self.dropped]}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BudgetPlan:
        return cls(**{**values, "kept": [Promotion.from_dict(e) for e in values["kept"]],
                      "dropped": [Promotion.from_dict(e) for e in values["dropped"]]})


def named(entry: Promotion) -> str:
    """``minilm promoted 1a2b3c4d``, ``minilm baseline enc-lr=6.3e-06``, ``minilm dense adapter``."""
    lr = entry.params.get("encoder_lr")
    return f"{entry.base_model} {entry.role}" + (f" {entry.stage1_group}" if entry.stage1_group else "") + (
        f" enc-lr={lr:g}" if lr is not None else "")


def priority(entries: list[Promotion]) -> list[Promotion]:
    """Entries in the order they are dropped (first = dropped first): per base model the order
    ``promoted #1, control #1, promoted #2, ...`` read from its end, then the attribution controls, then the top
    configuration's other encoder rates with plain fine-tuning's; base models in turn."""
    per_model: dict[str, list[Promotion]] = {}
    for model in sorted({e.base_model for e in entries}):
        promoted = [e for e in entries if e.base_model == model and e.role == "promoted"]
        controls = [e for e in entries if e.base_model == model and e.role == "control"]
        # the top configuration at every rate of the encoder-lr grid comes first (the arms tuned alike), then
        # the controls and the other promoted configurations (each with its rates) in turn
        top = [e for e in promoted if e.stage1_group == promoted[0].stage1_group] if promoted else []
        rest = [[e for e in promoted if e.stage1_group == g] for g in dict.fromkeys(
            e.stage1_group for e in promoted if e not in top)]
        order = top + [e for i in range(max(len(rest), len(controls)))
                       for e in controls[i:i + 1] + (rest[i] if i < len(rest) else [])]
        plain = [e for e in entries if e.base_model == model and e.role == "baseline"]
        arms = [e for role in by_drop_rank(list(labels())) for e in entries
                if e.base_model == model and e.role == role]
        # the top promoted configuration and the first baseline (the grid's first rate) are never dropped; the
        # i-th SB-MoE candidate goes with the i-th plain rate (the grid's rates first on both sides); the top
        # configuration's other rates of the grid, with plain fine-tuning's, go only after the attribution
        # controls: an answer whose arms are not tuned alike is no answer, one without a control is a narrower one
        pairs = [order[i:i + 1] + plain[i:i + 1] for i in range(max(len(order), len(plain)))]
        grid = len(top) or 1
        breadth = [e for pair in reversed(pairs[grid:]) for e in pair]
        tuned_alike = [e for pair in reversed(pairs[1:grid]) for e in pair]
        per_model[model] = breadth + arms + tuned_alike
    droppable = []
    while any(per_model.values()):
        for model in sorted(per_model):
            if per_model[model]:
                droppable.append(per_model[model].pop(0))
    return droppable


def make_plan(entries: list[Promotion], seeds: int, costs: dict[str, ModelCosts], budget_s: float,
              spent_s: float, cores: int, confirm: int = 0) -> BudgetPlan:
    """Drop stage-2 work, least needed first, until the estimate fits the budget (see the module); the
    fresh confirmation seeds (``confirm``) go last, one at a time."""
    kept, dropped, asked = list(entries), [], None

    def estimate(kept: list[Promotion], seeds: int, confirm: int) -> dict[str, float]:
        # Tested (and confirmed): each base model's chosen configuration and baseline, and its attribution
        # controls kept; as many evaluations at once as the cores hold.
        tested = {m: 2 + sum(e.base_model == m and is_arm(e.role) for e in kept)
                  for m in {e.base_model for e in kept}}
        # with confirmation the attribution controls are trained there only, built from the choice
        selection = [e for e in kept if not (confirm and is_arm(e.role))]
        training = sum(costs[e.base_model].trial_s for e in selection) * seeds + sum(
            n * confirm * costs[m].trial_s for m, n in tested.items())
        test = sum(n * (confirm or seeds) * costs[m].test_s / max(1, cores // costs[m].eval_threads)
                   for m, n in tested.items())
        return {"training": training, "test": test, "total": spent_s + training + test}

    if estimate(kept, seeds, confirm)["total"] > budget_s and seeds > 1:
        asked, seeds = seeds, 1
    for entry in priority(entries):
        if estimate(kept, seeds, confirm)["total"] <= budget_s:
            break
        kept.remove(entry)
        dropped.append(entry)
    asked_confirm = confirm
    while confirm and estimate(kept, seeds, confirm)["total"] > budget_s:
        confirm -= 1
    models = sorted({e.base_model for e in kept}, key=[e.base_model for e in entries].index)
    while len(models) > 1 and estimate(kept, seeds, confirm)["total"] > budget_s:
        last = models.pop()                                                # a whole base model, the last first
        gone = [e for e in kept if e.base_model == last]
        kept, dropped = [e for e in kept if e not in gone], dropped + gone
    needed = estimate(kept, seeds, confirm)
    if needed["total"] > budget_s:                     # not even the least: stage 2 is not run (breadth, never depth)
        kept, dropped = [], dropped + kept
    return BudgetPlan(budget_s, spent_s, seeds, kept, dropped, needed,
                      {m: asdict(c) for m, c in costs.items()}, cores, asked, confirm,
                      asked_confirm if confirm < asked_confirm else None)


def read_plan(path: Path) -> BudgetPlan | None:
    """The plan of a stage 2 planned to a budget, else None."""
    return BudgetPlan.from_dict(json.loads(path.read_text())) if path.is_file() else None


def load_or_plan(path: Path, compute, kind: type = BudgetPlan):
    """The plan (a ``kind``) written before (a resumed study runs it), else ``compute()`` written now."""
    if path.is_file():
        return kind.from_dict(json.loads(path.read_text()))
    plan = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(plan.to_dict(), indent=2))
    tmp.replace(path)
    return plan


def plan_stage2(study: StudyConfig, entries: list[Promotion], seeds: int, started: float, cores: int,
                costs: dict[str, ModelCosts] | None = None) -> BudgetPlan:
    """Plan stage 2 within ``study.budget_seconds()`` from each base model's costs (measured here now unless
    the forecast measured them); the time spent counts from ``started`` (``time.monotonic()``)."""
    costs = costs or measured_costs(study, {e.base_model for e in entries}, cores)
    return make_plan(entries, seeds, costs, study.budget_seconds(), time.monotonic() - started, cores,
                     study.finetune.confirm_seeds)


@dataclass
class Forecast:
    """Before stage 1: stage 2 and its test phase as configured and at the least, from costs measured now."""
    full_s: float
    least_s: float
    budget_s: float
    costs: dict[str, ModelCosts] = field(default_factory=dict)     # handed on to the plan

    @property
    def fits(self) -> bool:
        return self.least_s < self.budget_s

    def summary_line(self) -> str:
        return (f"[plan] before stage 1: stage 2 and its test phase estimated {self.full_s / 60:.0f} min as "
                f"configured, "
                f"{self.least_s / 60:.0f} min at the least (the first base model's baseline and top configuration, "
                f"1 seed); budget {self.budget_s / 60:.0f} min for the whole command, the caches and stage 1 first"
                + ("" if self.fits else ": stage 2 will not fit, and will not run unless the budget is raised"))


def forecast(study: StudyConfig, cores: int) -> Forecast:
    """Stage 2 estimated before stage 1 (so that a budget this machine cannot meet is said up front)."""
    from sbmoe_ray.model.backbones import hidden_size

    models = [str(m) for m in study.space["base_model"]]
    for model in models:
        hidden_size(model)                     # a clear error for an unknown or unreachable model, first
    grid = study.finetune.lr_grid
    entries = [Promotion(m, "promoted", {"encoder_lr": lr}, f"promoted #{i + 1}") for m in models
               for i in range(study.promote) for lr in grid]
    entries += [Promotion(m, "control", {}, f"control #{i + 1}") for m in models
                for i in range(study.finetune.controls)]
    lrs = study.finetune.baseline_lrs(study.finetune.sbmoe_candidates(study.promote))
    entries += [Promotion(m, "baseline", {"encoder_lr": lr}) for m in models for lr in lrs]
    entries += [Promotion(m, ARMS[arm].label, {}) for m in models for arm in study.finetune.attribution]
    seeds, costs = study.finetune.replicates()[0], measured_costs(study, models, cores)
    confirm = study.finetune.confirm_seeds
    full = make_plan(entries, seeds, costs, math.inf, 0.0, cores, confirm).estimate_s["total"]
    least = make_plan(entries, seeds, costs, 0.0, 0.0, cores, confirm).estimate_s["total"]
    return Forecast(full, least, study.budget_seconds(), costs)
