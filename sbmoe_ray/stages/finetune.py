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

from sbmoe_ray.analysis.records import TrialRecord, load_trials
from sbmoe_ray.analysis.report import write_report
from sbmoe_ray.analysis.result import FinetuneResult, StageResult, analyze_finetune, study_times
from sbmoe_ray.analysis.routing import routing_metrics
from sbmoe_ray.analysis.sections.first_screen import terminal_answer
from sbmoe_ray.stages.budget import BudgetPlan
from sbmoe_ray.stages.confirm import confirmation_entries, run_confirmation
from sbmoe_ray.stages.confirm_plan import confirmation_plan, read_confirmation_plan, with_admitted
from sbmoe_ray.stages.finetune_setup import Stage2Setup, power_plan_lines, setup_from_disk
from sbmoe_ray.stages.grid import fit_grid
from sbmoe_ray.stages.test_phase import test_phase, trec_files
from sbmoe_ray.study.config import StudyConfig
from sbmoe_ray.study.points import Promotion
from sbmoe_ray.study.space import BY_NAME
from sbmoe_ray.tracking import StudyTracker


def result_of(study: StudyConfig, proxy: StageResult, records: list[TrialRecord], setup: Stage2Setup,
              confirmed: list[TrialRecord] | None = None) -> FinetuneResult:
    """Stage 2's result from its trials' records and, when it confirmed, its confirmation's (the tested ones),
    with where the study's time went."""
    plan = setup.plan
    seconds = study_times(proxy.records, records, confirmed or [])
    text, again = plan and plan.sentence(seconds["stage 2 training"]), None
    if plan is not None and study.layout.confirm_plan_file.is_file():
        again = read_confirmation_plan(study.layout.confirm_plan_file)
        line = again.summary_line().removeprefix("[plan] ")
        text = f"{text} {line[0].upper()}{line[1:]}."
    result = analyze_finetune(study, records, setup.entries, setup.seeds, setup.why, seconds,
                              plan and plan.to_dict(), text, confirmed)
    if again is not None:
        result.summary.confirmation_plan = again.to_dict()
    result.summary.power_plan = list(setup.power_plans)
    return result


def rebuild(study: StudyConfig, proxy: StageResult) -> FinetuneResult | None:
    """Stage 2's result from what it left on disk (``sbmoe report``); None if it never started or ran nothing."""
    setup = setup_from_disk(study, proxy)
    if setup is None or setup.runs_nothing:
        return None
    confirmed = load_trials(study.layout.confirm) if setup.confirm_seeds else None
    return result_of(study, proxy, load_trials(study.layout.finetune), setup, confirmed)


def confirm_and_test(study: StudyConfig, tracker: StudyTracker, stage: StudyTracker, records: list[TrialRecord],
                     entries: list[Promotion], setup: Stage2Setup, cores: int | None):
    """Test what stage 2 chose: its confirmation's fresh replicates (their records; False if one failed), or,
    without confirmation seeds, the selection replicates themselves (None)."""
    if setup.confirm_seeds:
        chosen = confirmation_entries(entries, records, setup.mode)
        confirmed = run_confirmation(study, tracker, chosen, setup.confirm_seeds, setup.mode, cores)
        return False if confirmed is None else confirmed
    test_phase(study, records, setup.mode, cores)
    stage.log_trial_files(trec_files(records))
    return None


def not_run(study: StudyConfig, tracker: StudyTracker, proxy: StageResult, plan: BudgetPlan) -> StageResult:
    """Stage 2 over the budget even at its least: not run; the report and the parent run say why, and the
    answer (and the exported models) are stage 1's."""
    write_report(study, proxy, stage2_not_run=plan.not_run())
    tracker.log_report(study.layout.report_dir)
    print(f"stage 2 (fine-tuning): not run; the answer is stage 1's. report: {study.layout.report_file}", flush=True)
    return proxy


def where(study: StudyConfig) -> str:
    """How a stage-2 trial trains, as the terminal says it: ``fine-tuned: top 1 of 6 layers, one worker in its
    trial's process`` or ``..., on 2 Ray Train workers``."""
    ft = study.finetune
    how = (f"one worker in its trial's process ({ft.cpus_per_worker:g} CPUs" + (", a GPU share" if ft.use_gpu else "")
           + ")" if ft.num_workers == 1 else f"on {ft.num_workers} Ray Train workers")
    return f"{study.depth_label()}, {how}"


def run_finetune(study: StudyConfig, tracker: StudyTracker, proxy: StageResult, setup: Stage2Setup, started: float,
                 cores: int) -> FinetuneResult | None:
    """Stage 2 as ``setup`` decided it: fine-tune, confirm what it chose on fresh seeds and test it, check the
    proxy; its result (the pipeline reports it: :func:`publish_finetune`), or None if a trial failed (run the
    study again to retry it)."""
    for line in power_plan_lines(setup):
        print(line, flush=True)
    selection = setup.selection
    points = [e.point(r) for e in selection for r in range(setup.seeds)]
    print(f"\nstage 2 (fine-tuning): {len(selection)} configurations x {setup.seeds} seed(s) ({setup.why}) = "
          f"{len(points)} trials, {where(study)}; encoder learning rates "
          f"{', '.join(f'{lr:g}' for lr in study.finetune.lr_grid)} for every arm"
          + (" (the attribution controls: built from the choice at confirmation)"
             if len(selection) < len(setup.entries) else ""), flush=True)
    stage = tracker.for_stage("finetune", "stage 2: fine-tuning (encoder + SB-MoE head)")
    stage_started = time.monotonic()
    records = fit_grid(study, stage, points)
    if records is None:
        return None
    admitted = with_admitted(setup.entries, confirmation_plan(study, setup.plan, records, started))
    confirmed = confirm_and_test(study, tracker, stage, records, admitted, setup,
                                 None if study.finetune.use_gpu else cores)
    if confirmed is False:
        stage.finish_stage(status="FAILED")
        return None
    result = result_of(study, proxy, records, setup, confirmed)
    stage.log_stage_result(result)
    estimate = {f"plan_{k}_seconds": v for k, v in setup.plan.estimate_s.items()} if setup.plan else {}
    routing = routing_metrics(result.summary.routing, BY_NAME["base_model"].show)
    stage.finish_stage({"seconds": time.monotonic() - stage_started, **estimate, **routing})
    return result


def publish_finetune(study: StudyConfig, tracker: StudyTracker, proxy: StageResult, result: FinetuneResult) -> None:
    """Stage 2's answer out: the report (both stages), the answer on the study's MLflow run, the terminal."""
    write_report(study, proxy, result)
    tracker.log_answer(proxy.summary, result.agreement, result.summary.primary)
    tracker.log_report(study.layout.report_dir)
    for a in result.agreement.values():
        print(a.verdict)
    stage = f"stage 2 ({study.depth_label()}, confirmed on fresh seeds)"
    print("\n".join(terminal_answer(result.summary, stage, True)))
    print(f"report (both stages): {study.layout.report_file}")
