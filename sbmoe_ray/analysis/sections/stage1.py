"""Stage 1's section: the proxy search (SB-MoE heads on the frozen encoder). Its claim and per-collection tables
when stage 2 gave the answer (otherwise they are the first screen), then its figures: heatmaps, the Pareto front
(with a zero-shot validation set), parameter importances, the chosen configurations' expert load, routing."""

from __future__ import annotations

from sbmoe_ray.analysis import figures
from sbmoe_ray.analysis.pareto import pareto_figure, pareto_lines
from sbmoe_ray.analysis.primary import claim_lines
from sbmoe_ray.analysis.result import StageResult
from sbmoe_ray.analysis.sections.routing import routing_section
from sbmoe_ray.analysis.sections.tables import answer_tables
from sbmoe_ray.study.space import BY_NAME


def proxy_section(study, proxy: StageResult, answered: bool) -> list[str]:
    """Stage 1's markdown, its figures written beside it; ``answered``: stage 1's answer is the first screen."""
    folder, datasets, mode = study.layout.report_dir, study.test_names, study.proxy_stage().mode
    records, groups, summary = proxy.records, proxy.groups, proxy.summary
    lines = ["## Stage 1: the proxy search (SB-MoE heads on the frozen encoder)", "",
             f"{len(records)} finished trials; objective `{study.proxy.objective}` ({mode}) on the held-out "
             f"validation split of `{study.train.data.train_dataset}`.", ""]
    if not answered:
        lines += ["Stage 1's own claim (exploratory once stage 2 ran; its power plan's pilot):", "",
                  *claim_lines(summary.primary)]
        if summary.per_base_model:
            lines += answer_tables(summary, datasets, summary.claimed())
    if any(not g.is_baseline for g in groups):
        for dataset in datasets:
            figures.save(figures.heatmap_figure(groups, dataset, mode), folder / f"heatmap_{dataset}.png")
            lines += [f"![{dataset} heatmap](heatmap_{dataset}.png)", ""]
    zero_shot = study.train.data.zero_shot_validation
    if zero_shot:
        figures.save(pareto_figure(groups, mode, study.proxy.objective, zero_shot), folder / "pareto.png")
        lines += pareto_lines(summary.pareto, study.proxy.objective, zero_shot, datasets)
    fig = figures.importance_figure(groups, mode, study.proxy.objective)
    if fig is not None:
        figures.save(fig, folder / "importances.png")
        lines += ["### Parameter importances (per base model)", "", "![importances](importances.png)", ""]
    by_id = {r.trial_id: r for r in records}
    for answer in summary.per_base_model:
        first = by_id[answer.chosen.trial_ids[0]]
        fig = figures.expert_load_figure(first.history, first.test, title=f"{answer.base_model} chosen: "
                                         f"{answer.chosen.config} (seed {first.seed})")
        if fig is not None:
            name = f"expert_load_{BY_NAME['base_model'].show(answer.base_model)}.png"
            figures.save(fig, folder / name)
            lines += [f"### Expert load of the chosen {answer.base_model} configuration", "",
                      f"![expert load]({name})", ""]
    return lines + routing_section(summary.routing, folder, "routing.png", "stage 1")
