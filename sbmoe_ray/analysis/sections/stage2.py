"""Stage 2's sections: the controls and the learning curves right under the answer, then the detail (what
ran and why, the power plan, every fine-tuned configuration, the proxy check, what the evidence cannot
settle, routing)."""

from __future__ import annotations

from sbmoe_ray.analysis import figures
from sbmoe_ray.analysis.attribution import attribution_lines
from sbmoe_ray.analysis.curves import curve_lines, curve_rows, learning_curves_figure
from sbmoe_ray.analysis.evidence import confirmation_line, evidence_lines
from sbmoe_ray.analysis.result import FinetuneResult
from sbmoe_ray.analysis.sections.tables import markdown_table
from sbmoe_ray.study.arms import ARMS


def controls_section(study, result: FinetuneResult) -> list[str]:
    """The chosen configuration against its attribution controls, and the curves of every stage-2 run."""
    lines = attribution_lines(result.summary.attribution)
    lines = ["## The controls: is a gain the experts'?", "", *lines] if lines else []
    return lines + curves_section(result, study.finetune_stage().mode, study.finetune.objective,
                                  study.layout.report_dir, study.finetune.schedule)


def curves_section(result: FinetuneResult, mode: str, metric: str, folder, schedule: str | None = None) -> list[str]:
    """Stage 2's learning curves: how each run ended, where it flattened, and the figure."""
    roles = {r.group: (r.base_model, r.role) for r in result.configurations}
    records = [*result.records, *result.confirmed]
    # the attribution controls are built from the choice at confirmation: their groups are their own
    roles.update({r.group: (r.params.get("base_model", "?"), ARMS[r.params["arm"]].label) for r in records
                  if r.params.get("arm") in ARMS})
    rows = curve_rows(records, roles, metric, mode)
    if not rows:
        return []
    figures.save(learning_curves_figure(records, roles, metric), folder / "learning_curves.png")
    return ["## Stage 2 learning curves", "", "![learning curves](learning_curves.png)", "",
            *curve_lines(rows, metric, schedule), ""]


def stopping(ft) -> str:
    if not ft.patience:
        return "no early stopping"
    noise = (f" or {ft.min_delta_se:g} standard error(s) of the per-pair difference from the best validation, "
             "whichever is larger") if ft.min_delta_se else ""
    return f"early stop after {ft.patience} validations without improving by more than {ft.min_delta:g}{noise}"


def where(study) -> str:
    ft = study.finetune
    return "one worker in its trial's process" if ft.num_workers == 1 else f"{ft.num_workers} Ray Train workers"


def detail_section(study, result: FinetuneResult) -> list[str]:
    """What stage 2 ran and why, its plans, its configurations and the proxy check (the figure beside it)."""
    ft, objective2 = study.finetune, study.finetune.objective
    figures.save(figures.agreement_figure(result.configurations, study.proxy.objective, objective2),
                 study.layout.report_dir / "stage_agreement.png")
    dropped = result.plan is not None and bool(result.plan.get("dropped") or result.plan.get("dropped_seeds"))
    lrs = ft.baseline_lrs(ft.sbmoe_candidates(study.promote))
    plain = (f"plain fine-tuning at {len(lrs)} encoder learning rates ({', '.join(f'{lr:g}' for lr in lrs)}: tuned "
             "as much as SB-MoE, the one validation prefers tested)" if len(lrs) > 1 else "plain fine-tuning")
    grid = (f"every promoted configuration at each encoder learning rate of the shared grid "
            f"({', '.join(f'{lr:g}' for lr in ft.lr_grid)}), " if len(ft.lr_grid) > 1 else "")
    lines = ["## Stage 2: fine-tuning the promoted configurations", "",
             f"Per base model the top {study.promote} stage-1 configurations ({grid}head at its own moe_lr), "
             f"{ft.controls} random control(s) and {plain}"
             f"{' (fewer where the budget said so, below)' if dropped else ''}, each fine-tuned with its encoder "
             f"(lr {ft.lr_grid[0]:g} unless named) for at most {ft.epochs} epoch(s) "
             f"({stopping(ft)}; schedule {ft.schedule}) on {where(study)}, {result.seeds} seed(s) "
             f"({result.seeds_why}); ranked by `{objective2}` (mean over seeds). Time: "
             + ", ".join(f"{k} {v / 60:.1f} min" for k, v in result.seconds.items()) + ".", "",
             confirmation_line(result.training_seeds), ""]
    if result.plan_text:
        lines += [result.plan_text, ""]
    for plan in result.summary.power_plan:
        lines += ["Planned before stage 2 (from stage 1's claim; printed before it ran):", "", "```",
                  *plan.lines(), "```", ""]
    header = ["base_model", "role", "config", f"stage 1 {study.proxy.objective}", f"stage 2 {objective2}",
              "stage 2 val nDCG@10", "seeds"]
    rows = [{**r.to_dict(), f"stage 1 {study.proxy.objective}": r.stage1_objective, f"stage 2 {objective2}":
             r.stage2_objective, "stage 2 val nDCG@10": r.stage2_val_ndcg} for r in result.configurations]
    lines += markdown_table(rows, header)
    lines += ["", "Does the proxy rank like fine-tuning? (Kendall's τ with its exact p over the promoted and control "
              "configurations, Spearman's ρ, top-k recall of the promoted among stage 2's top k, regret of the "
              "proxy's first pick in stage 2's objective)", ""]
    lines += [a.line() for a in result.agreement.values()]
    lines += ["", "![stage agreement](stage_agreement.png)", ""]
    return lines + evidence_lines(result.summary, result.agreement, result.plan, result.training_seeds)
