"""Stage 2, fine-tuning: the proxy's best configurations, some controls and plain fine-tuning, trained with
their encoder on Ray Train workers; the one it chooses tested against the baseline; the proxy checked.

Per base model stage 2 fine-tunes what :mod:`sbmoe_ray.stages.promotion` picks from stage 1's result (the
top ``promote`` by the stage-1 objective, ``finetune.controls`` random others, the plain fine-tuning
baseline, the top one's attribution controls), each on ``finetune.num_workers`` Ray Train workers until
its stopping criterion, replicated over ``finetune.seeds`` (planned to ``budget_minutes`` where set:
:mod:`sbmoe_ray.stages.budget`); then trains what it chose again on fresh seeds and tests those
(:mod:`sbmoe_ray.stages.confirm`, :mod:`sbmoe_ray.stages.test_phase`) and checks the proxy: Kendall's τ
and Spearman's ρ of the two stages' objectives over the promoted and control configurations
(:mod:`sbmoe_ray.analysis.agreement`).

Head learning rate in stage 2: the promoted configuration's own ``moe_lr`` (the encoder's is
``finetune.encoder_lr``, 50-500x lower): the head's optimum on frozen features is the best estimate we
have, and searching a multiplier would multiply stage 2's cost by the grid's size. Every step resumes:
the Tuner restores, the promotions and the plan are read back, a tested trial keeps its test results.
"""

from __future__ import annotations

import time

from sbmoe_ray.analysis.power import PowerPlan, plan_from_pilot
from sbmoe_ray.analysis.primary import terminal_lines
from sbmoe_ray.analysis.records import TrialRecord, load_trials
from sbmoe_ray.analysis.report import write_report
from sbmoe_ray.analysis.result import FinetuneResult, StageResult, analyze_finetune, study_times
from sbmoe_ray.analysis.routing import routing_metrics
from sbmoe_ray.stages.budget import BudgetPlan, load_or_plan, plan_stage2, read_plan
from sbmoe_ray.stages.confirm import confirmation_entries, run_confirmation
from sbmoe_ray.stages.confirm_plan import confirmation_plan, read_confirmation_plan, with_admitted
from sbmoe_ray.stages.costs import ModelCosts
from sbmoe_ray.stages.grid import fit_grid
from sbmoe_ray.stages.promotion import load_or_promote, promotions, read_promotions
from sbmoe_ray.stages.proxy import controls
from sbmoe_ray.stages.test_phase import test_phase, trec_files
from sbmoe_ray.study.arms import is_arm
from sbmoe_ray.study.config import StudyConfig
from sbmoe_ray.study.points import Promotion
from sbmoe_ray.study.space import BY_NAME
from sbmoe_ray.tracking import StudyTracker


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


def planned(study: StudyConfig, entries: list[Promotion], plan: BudgetPlan | None
            ) -> tuple[list[Promotion], int, str]:
    """Stage 2's entries and seeds (and why that many): as promoted, or as the budget's plan says."""
    seeds, why = study.finetune.replicates()
    if plan is None:
        return entries, seeds, why
    return plan.kept, plan.seeds, why if plan.seeds == seeds else f"{why}; {plan.seeds} to fit budget_minutes"


def budget_plan(study: StudyConfig, entries: list[Promotion], started: float, cores: int,
                costs: dict[str, ModelCosts] | None) -> BudgetPlan | None:
    """The plan within ``budget_minutes`` (made once, from costs measured here, read back on resume), if any."""
    if study.budget_seconds() is None:
        return None
    seeds = study.finetune.replicates()[0]
    plan = load_or_plan(study.layout.plan_file, lambda: plan_stage2(study, entries, seeds, started, cores, costs))
    print(plan.summary_line(), flush=True)
    return plan


def result_of(study: StudyConfig, proxy: StageResult, records: list[TrialRecord], entries: list[Promotion],
              plan: BudgetPlan | None, confirmed: list[TrialRecord] | None = None) -> FinetuneResult:
    """Stage 2's result from its trials' records and, when it confirmed, its confirmation's (the tested ones),
    with where the study's time went."""
    entries, seeds, why = planned(study, entries, plan)
    seconds = study_times(proxy.records, records, confirmed or [])
    text, again = plan and plan.sentence(seconds["stage 2 training"]), None
    if plan is not None and study.layout.confirm_plan_file.is_file():
        again = read_confirmation_plan(study.layout.confirm_plan_file)
        line = again.summary_line().removeprefix("[plan] ")
        text = f"{text} {line[0].upper()}{line[1:]}."
    result = analyze_finetune(study, records, entries, seeds, why, seconds, plan and plan.to_dict(), text, confirmed)
    if again is not None:
        result.summary["confirmation_plan"] = again.to_dict()
    result.summary["power_plan"] = [p.to_dict() for p in power_plans(study, proxy, plan)]
    return result


def confirm_seeds(study: StudyConfig, plan: BudgetPlan | None) -> int:
    """Fresh seeds for the confirmation: as configured, or as the budget's plan kept."""
    return study.finetune.confirm_seeds if plan is None else plan.confirm_seeds


def rebuild(study: StudyConfig, proxy: StageResult) -> FinetuneResult | None:
    """Stage 2's result from what it left on disk (``sbmoe report``); None if it never started."""
    if not study.layout.promotions_file.is_file():
        return None
    entries = read_promotions(study.layout.promotions_file)
    plan = read_plan(study.layout.plan_file)
    if plan is not None and plan.runs_nothing:
        return None
    confirmed = load_trials(study.layout.confirm) if confirm_seeds(study, plan) else None
    return result_of(study, proxy, load_trials(study.layout.finetune), entries, plan, confirmed)


def confirm_and_test(study: StudyConfig, tracker: StudyTracker, stage: StudyTracker, records: list[TrialRecord],
                     entries: list[Promotion], plan: BudgetPlan | None, cores: int | None):
    """Test what stage 2 chose: its confirmation's fresh replicates (their records; False if one failed), or,
    without confirmation seeds, the selection replicates themselves (None)."""
    if confirm_seeds(study, plan):
        chosen = confirmation_entries(entries, records, study.finetune_stage().mode)
        confirmed = run_confirmation(study, tracker, chosen, confirm_seeds(study, plan), cores)
        return False if confirmed is None else confirmed
    test_phase(study, records, cores)
    stage.log_trial_files(trec_files(records))
    return None


def not_run(study: StudyConfig, tracker: StudyTracker, proxy: StageResult, plan: BudgetPlan) -> StageResult:
    """Stage 2 over the budget even at its least: not run; the report and the parent run say why, and the
    answer (and the exported models) are stage 1's."""
    write_report(study, proxy, stage2_not_run=plan.not_run())
    tracker.log_report(study.layout.report_dir)
    print(f"stage 2 (fine-tuning): not run; the answer is stage 1's. report: {study.layout.report_file}", flush=True)
    return proxy


def power_plans(study: StudyConfig, proxy: StageResult, plan: BudgetPlan | None) -> list[PowerPlan]:
    """What stage 2's primary claim can detect at the seeds it will test, from stage 1's claim as the pilot."""
    pilots = [p for p in proxy.summary.get("primary", []) if min(p["seeds"]) >= 2]
    seeds = confirm_seeds(study, plan) or planned(study, read_promotions(study.layout.promotions_file), plan)[1]
    return [plan_from_pilot(p, seeds, study.analysis, len(pilots)) for p in pilots]


def print_power_plan(study: StudyConfig, proxy: StageResult, plan: BudgetPlan | None) -> None:
    plans = power_plans(study, proxy, plan)
    for line in (line for p in plans for line in p.lines()):
        print(line, flush=True)
    if not plans:
        print("power plan: stage 1 has no claim with 2 or more seeds an arm to plan from", flush=True)


def where(study: StudyConfig) -> str:
    """How a stage-2 trial trains, as the terminal says it: ``fine-tuned: top 1 of 6 layers, one worker in its
    trial's process`` or ``..., on 2 Ray Train workers``."""
    ft = study.finetune
    how = (f"one worker in its trial's process ({ft.cpus_per_worker:g} CPUs" + (", a GPU share" if ft.use_gpu else "")
           + ")" if ft.num_workers == 1 else f"on {ft.num_workers} Ray Train workers")
    return f"{study.depth_label()}, {how}"


def run_finetune(study: StudyConfig, tracker: StudyTracker, proxy: StageResult, started: float, cores: int,
                 costs: dict[str, ModelCosts] | None = None) -> FinetuneResult | StageResult | None:
    """Stage 2: promote, plan (if a budget is set), fine-tune, test what it chose, check the proxy, report;
    None if a trial failed (run the study again to retry it); stage 1's result if the budget cannot hold
    even the least stage 2."""
    promoted = promote(study, proxy)
    plan = budget_plan(study, promoted, started, cores, costs)
    if plan is not None and plan.runs_nothing:
        return not_run(study, tracker, proxy, plan)
    entries, seeds, why = planned(study, promoted, plan)
    print_power_plan(study, proxy, plan)
    selection = [e for e in entries if not (is_arm(e.role) and confirm_seeds(study, plan))]
    points = [e.point(r) for e in selection for r in range(seeds)]
    print(f"\nstage 2 (fine-tuning): {len(selection)} configurations x {seeds} seed(s) ({why}) = {len(points)} "
          f"trials, {where(study)}; encoder learning rates {', '.join(f'{lr:g}' for lr in study.finetune.lr_grid)} for "
          "every arm" + (" (the attribution controls: built from the choice at confirmation)"
                         if len(selection) < len(entries) else ""), flush=True)
    stage = tracker.for_stage("finetune", "stage 2: fine-tuning (encoder + SB-MoE head)")
    stage_started = time.monotonic()
    records = fit_grid(study, stage, points)
    if records is None:
        return None
    admitted = with_admitted(entries, confirmation_plan(study, plan, records, started))
    confirmed = confirm_and_test(study, tracker, stage, records, admitted, plan,
                                 None if study.finetune.use_gpu else cores)
    if confirmed is False:
        stage.finish_stage(status="FAILED")
        return None
    result = result_of(study, proxy, records, promoted, plan, confirmed)
    stage.log_stage_result(result)
    write_report(study, proxy, result)
    estimate = {f"plan_{k}_seconds": v for k, v in plan.estimate_s.items()} if plan else {}
    routing = routing_metrics(result.summary.get("routing", {}), BY_NAME["base_model"].show)
    stage.finish_stage({"seconds": time.monotonic() - stage_started, **estimate, **routing})
    tracker.log_answer(proxy.summary, result.agreement, result.summary.get("primary"))
    tracker.log_report(study.layout.report_dir)
    for a in result.agreement.values():
        print(a["verdict"])
    print("\n".join(terminal_lines(result.summary, f"stage 2 ({study.depth_label()}, confirmed on fresh seeds)")))
    print(f"report (both stages): {study.layout.report_file}")
    return result
