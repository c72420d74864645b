"""Stage 2 as decided before it trains, computed once and handed on (:class:`Stage2Setup`): the promotions, the
budget's plan, what runs on how many seeds and why, the confirmation's fresh seeds, the objective's direction and
the power plan of the primary claim. Made at the start of stage 2 (each part read back on resume: the promotions
and the plan are files of the study) or, for ``sbmoe report``, from the files alone."""

from __future__ import annotations

from dataclasses import dataclass

from sbmoe_ray.analysis.power import PowerPlan, plan_from_pilot
from sbmoe_ray.analysis.result import StageResult
from sbmoe_ray.stages.budget import BudgetPlan, load_or_plan, plan_stage2, read_plan
from sbmoe_ray.stages.costs import ModelCosts
from sbmoe_ray.stages.promotion import load_or_promote, promotions, read_promotions
from sbmoe_ray.stages.proxy import controls
from sbmoe_ray.study.arms import is_arm
from sbmoe_ray.study.config import StudyConfig
from sbmoe_ray.study.points import Promotion


@dataclass(frozen=True)
class Stage2Setup:
    """What stage 2 runs, decided once."""

    promoted: list[Promotion]           # as promoted from stage 1
    plan: BudgetPlan | None             # the budget's plan (None: no budget)
    entries: list[Promotion]            # what the plan kept (all promoted without a plan)
    seeds: int                          # selection seeds an entry
    why: str                            # ... and why that many
    confirm_seeds: int                  # fresh seeds of the confirmation (0: the selection replicates are tested)
    mode: str                           # the stage-2 objective's direction, "min" or "max"
    power_plans: tuple[PowerPlan, ...] = ()

    @property
    def runs_nothing(self) -> bool:
        return self.plan is not None and self.plan.runs_nothing

    @property
    def selection(self) -> list[Promotion]:
        """The entries trained for the selection: the attribution controls wait for the choice when confirmed."""
        return [e for e in self.entries if not (is_arm(e.role) and self.confirm_seeds)]


def promote(study: StudyConfig, proxy: StageResult) -> list[Promotion]:
    """The stage-2 configurations, chosen once from stage 1's result (read back on resume)."""
    ft = study.finetune
    lrs = ft.baseline_lrs(ft.sbmoe_candidates(study.promote))
    settings = {"promote": study.promote, "controls": ft.controls, "seed": study.proxy.seed,
                "seeds": ft.replicates()[0], "attribution": ft.attribution, "baseline_lrs": lrs,
                "encoder_lrs": ft.lr_grid}
    return load_or_promote(study.layout.promotions_file, settings, lambda: promotions(
        proxy.groups, study.proxy_stage().mode, study.promote, ft.controls, study.proxy.seed,
        controls(study), ft.attribution, lrs, ft.lr_grid))


def setup_of(study: StudyConfig, proxy: StageResult, promoted: list[Promotion], plan: BudgetPlan | None
             ) -> Stage2Setup:
    """The setup from the promotions and the plan: what the plan keeps, the seeds and the power plan."""
    seeds, why = study.finetune.replicates()
    entries = promoted
    if plan is not None:
        entries, why = plan.kept, why if plan.seeds == seeds else f"{why}; {plan.seeds} to fit budget_minutes"
        seeds = plan.seeds
    confirm = study.finetune.confirm_seeds if plan is None else plan.confirm_seeds
    pilots = [p for p in proxy.summary.primary if min(p.seeds) >= 2]
    power = tuple(plan_from_pilot(p, confirm or seeds, study.analysis, len(pilots)) for p in pilots)
    return Stage2Setup(promoted, plan, entries, seeds, why, confirm, study.finetune_stage().mode, power)


def setup_stage2(study: StudyConfig, proxy: StageResult, started: float, cores: int,
                 costs: dict[str, ModelCosts] | None) -> Stage2Setup:
    """Stage 2's setup at its start: promote, and plan within ``budget_minutes`` (from the costs the forecast
    measured, or measured now); printed; read back on resume."""
    promoted = promote(study, proxy)
    plan = None
    if study.budget_seconds() is not None:
        seeds = study.finetune.replicates()[0]
        plan = load_or_plan(study.layout.plan_file,
                            lambda: plan_stage2(study, promoted, seeds, started, cores, costs))
        print(plan.summary_line(), flush=True)
    return setup_of(study, proxy, promoted, plan)


def setup_from_disk(study: StudyConfig, proxy: StageResult) -> Stage2Setup | None:
    """The setup a study left on disk (``sbmoe report``); None when stage 2 never started."""
    if not study.layout.promotions_file.is_file():
        return None
    return setup_of(study, proxy, read_promotions(study.layout.promotions_file), read_plan(study.layout.plan_file))


def power_plan_lines(setup: Stage2Setup) -> list[str]:
    """What stage 2's primary claim can detect at the seeds it will test, from stage 1's claim as the pilot."""
    lines = [line for p in setup.power_plans for line in p.lines()]
    return lines or ["power plan: stage 1 has no claim with 2 or more seeds an arm to plan from"]
