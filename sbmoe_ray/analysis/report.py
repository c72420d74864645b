"""A study's report, written by one function (:func:`write_report`) at the end of each stage and by
``sbmoe report``: ``<study>/report/report.md`` with its figures, and ``summary.json``.

Stage 1 (the proxy): the answer per base model (what validation prefers, the SB-MoE configuration chosen by
its mean validation objective over seeds, and its test comparison with the baseline: Δ with queries and
seeds counted together, TOST, the minimum detectable effect and a verdict, over the confirmatory family:
:mod:`sbmoe_ray.analysis.comparisons`), the method and its A/A sanity check, heatmaps,
the Pareto front (with a zero-shot validation set), parameter importances and the chosen configurations'
expert load. Stage 2 (fine-tuning): every fine-tuned configuration with both stages' objectives, the
budget's plan, the proxy check (Kendall's τ with exact p, top-k recall, regret, a verdict) and the test
comparison of the configuration stage 2 chose against plain fine-tuning. Everything comes from the stages' results
(:mod:`sbmoe_ray.analysis.result`); nothing is read back from disk.
"""

from __future__ import annotations

import json
import math
from typing import Any

from sbmoe_ray.analysis import figures
from sbmoe_ray.analysis.attribution import attribution_lines
from sbmoe_ray.analysis.curves import curve_lines, curve_rows, learning_curves_figure
from sbmoe_ray.analysis.evidence import confirmation_line, evidence_lines, not_run_lines
from sbmoe_ray.analysis.pareto import pareto_figure, pareto_lines
from sbmoe_ray.analysis.power import PowerPlan
from sbmoe_ray.analysis.primary import claim_lines
from sbmoe_ray.analysis.records import TrialRecord
from sbmoe_ray.analysis.result import FinetuneResult, StageResult
from sbmoe_ray.analysis.routing import routing_lines
from sbmoe_ray.analysis.test_sets import role_line
from sbmoe_ray.study.arms import ARMS
from sbmoe_ray.study.config import StudyConfig
from sbmoe_ray.study.layout import StudyLayout
from sbmoe_ray.study.space import BY_NAME

SUMMARY_COLUMNS = ("test set", "base", "sb-moe", "Δ", "95% CI", "p adj", "TOST p adj", "detectable", "verdict")


def _interval(low: float, high: float) -> str:
    return "n/a" if math.isnan(low) else f"[{low:+.3f}, {high:+.3f}]"


def summary_rows(summary: dict, answer: dict, datasets: list[str]) -> list[dict[str, Any]]:
    """One base model's rows, one per test set: Δ nDCG@10 with its interval (queries and seeds together),
    adjusted p and TOST p, the minimum detectable effect and the verdict (the query-only interval of the
    paper's paired t-test is in ``summary.json``)."""
    roles, rows = summary.get("test_sets", {}), []
    for dataset in datasets:
        c = answer["datasets"].get(dataset)
        if c:
            rows.append({"test set": dataset, "base": c["baseline_mean"], "sb-moe": c["moe_mean"], "Δ": c["delta"],
                         "95% CI": _interval(c["ci_low"], c["ci_high"]), "p adj": c["p_adjusted"],
                         "TOST p adj": c["tost_p_adjusted"], "detectable": c["mde"],
                         "verdict": c["verdict"] + _role(roles, dataset)})
    return rows


def _role(roles: dict, dataset: str) -> str:
    return " (validated, not zero-shot)" if roles.get(dataset, {}).get("role") == "validated" else ""


def markdown_table(rows: list[dict[str, Any]], header: list[str]) -> list[str]:
    """Rows as a markdown table (floats with 4 decimals)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(f"{row[h]:.4f}" if isinstance(row.get(h), float) else str(row.get(h, ""))
                                      for h in header) + " |" for row in rows]


def answer_table(summary: dict, datasets: list[str]) -> list[str]:
    """Per base model: what validation prefers and the configuration it chose, then one row per test set."""
    lines = []
    for answer in summary["per_base_model"]:
        chosen = answer["chosen"]
        why = " (SB-MoE's lead is within the validation noise: the simpler arm)" if answer.get("within_noise") else ""
        lines += [f"**{answer['base_model']}**: validation prefers {answer.get('preferred', 'sb-moe')}{why}; chosen "
                  f"`{chosen['config']}`, {len(chosen['seeds'])} seed(s).", "",
                  *markdown_table(summary_rows(summary, answer, datasets), list(SUMMARY_COLUMNS)), ""]
    return lines


def budget_line(summary: dict) -> str:
    b = summary["budget"]
    steps = (f" (at most {b['steps_cap']} optimizer steps; trials ran {b['steps_run']['min']}-{b['steps_run']['max']})"
             if b.get("steps_cap") else "")
    return (f"Budget: {b['configurations']} configurations (baselines included) x {b['seeds']} seed(s) = "
            f"{b['trials']} trials of {'at most ' if steps else ''}{b['epochs']} epoch(s) each{steps}.")


def aa_line(summary: dict) -> str:
    """The A/A sanity check: how often each test rejects replicate i against replicate j of one configuration
    (another null than the answer's; the answer's test size is simulated: :mod:`sbmoe_ray.analysis.simulation`)."""
    aa = summary.get("aa_check")
    if not aa or not aa["pairs"]:
        return "A/A check: no configuration has two replicates."
    return (f"A/A check ({aa['pairs']} pairs of replicates of the same configuration, every configuration and test "
            f"set, where every rejection is false): at α = {aa['alpha']:g} the combined test rejects "
            f"{aa['combined_rate']:.1%}, the query-only paired t-test {aa['query_only_rate']:.1%}.")


def surviving(summary: dict) -> str:
    """One paragraph: the method, the A/A sanity check, and what the secondary family lets the report say."""
    alpha, claims = summary.get("alpha", 0.05), []
    for a in summary["per_base_model"]:
        for d, c in a["datasets"].items():
            claims.append(f"{a['base_model']} on {d}: {c['verdict']} (Δ {c['delta']:+.3f})")
    unestimated = any("not estimated" in c for c in claims)
    return (f"{budget_line(summary)} Method: {summary['method']}. {aa_line(summary)} Per-collection family "
            f"(secondary to the primary claim above): the chosen SB-MoE configuration per base model on every test "
            f"set ({summary.get('confirmatory', 0)} comparisons, α = {alpha:g}); every other comparison is "
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


def proxy_section(study: StudyConfig, proxy: StageResult, layout: StudyLayout) -> list[str]:
    """Stage 1's markdown, its figures written beside it."""
    folder, datasets, mode = layout.report_dir, study.test_names, study.proxy_stage().mode
    records, groups, summary = proxy.records, proxy.groups, proxy.summary
    depth = study.depth_label() if study.promote else "stage 1 only (frozen encoder)"
    lines = [f"# Study `{study.name}`", "", f"**{depth[0].upper()}{depth[1:]}** (stage 2's depth, the same for every "
             f"arm; stage 1 trains the head on a frozen encoder)." if study.promote else f"**{depth}**", "",
             f"{len(records)} finished trials; objective `{study.proxy.objective}` ({mode}) on the held-out "
             f"validation split of `{study.train.data.train_dataset}`; test metrics below.", ""]
    if records:
        roles = role_line(summary["test_sets"], study.train.data.zero_shot_validation)
        lines += [identical_ids_line(records), "", roles, "", surviving(summary), ""]
    if summary["per_base_model"]:
        lines += [*answer_table(summary, datasets), ""]
    if any(not g.is_baseline for g in groups):
        for dataset in datasets:
            figures.save(figures.heatmap_figure(groups, dataset, mode), folder / f"heatmap_{dataset}.png")
            lines += [f"![{dataset} heatmap](heatmap_{dataset}.png)", ""]
    zero_shot = study.train.data.zero_shot_validation
    if zero_shot:
        figures.save(pareto_figure(groups, mode, study.proxy.objective, zero_shot), folder / "pareto.png")
        lines += pareto_lines(summary["pareto"], study.proxy.objective, zero_shot, datasets)
    fig = figures.importance_figure(groups, mode, study.proxy.objective)
    if fig is not None:
        figures.save(fig, folder / "importances.png")
        lines += ["## Parameter importances (per base model)", "", "![importances](importances.png)", ""]
    by_id = {r.trial_id: r for r in records}
    for answer in summary["per_base_model"]:
        first = by_id[answer["chosen"]["trial_ids"][0]]
        fig = figures.expert_load_figure(first.history, first.test, title=f"{answer['base_model']} chosen: "
                                         f"{answer['chosen']['config']} (seed {first.seed})")
        if fig is not None:
            name = f"expert_load_{BY_NAME['base_model'].show(answer['base_model'])}.png"
            figures.save(fig, folder / name)
            lines += [f"## Expert load of the chosen {answer['base_model']} configuration", "",
                      f"![expert load]({name})", ""]
    return lines + routing_section(summary.get("routing", {}), folder, "routing.png")


def routing_section(routing: dict, folder, name: str) -> list[str]:
    """Co-routing against chance, expert vs collection, agreement across seeds and collapse (with a figure)."""
    lines = ["## Routing of the chosen configurations", "", *routing_lines(routing), ""]
    fig = figures.routing_figure(routing)
    if fig is not None:
        figures.save(fig, folder / name)
        lines += [f"![routing]({name})", ""]
    return lines


def stopping(ft) -> str:
    if not ft.patience:
        return "no early stopping"
    noise = (f" or {ft.min_delta_se:g} standard error(s) of the per-pair difference from the best validation, "
             "whichever is larger") if ft.min_delta_se else ""
    return f"early stop after {ft.patience} validations without improving by more than {ft.min_delta:g}{noise}"


def where(study: StudyConfig) -> str:
    ft = study.finetune
    return "one worker in its trial's process" if ft.num_workers == 1 else f"{ft.num_workers} Ray Train workers"


def finetune_section(study: StudyConfig, result: FinetuneResult, layout: StudyLayout) -> list[str]:
    """Stage 2's markdown, its figure written beside it."""
    ft, datasets, objective2 = study.finetune, study.final_test_names, study.finetune.objective
    figures.save(figures.agreement_figure(result.configurations, study.proxy.objective, objective2),
                 layout.report_dir / "stage_agreement.png")
    dropped = result.plan is not None and bool(result.plan.get("dropped") or result.plan.get("dropped_seeds"))
    lrs = ft.baseline_lrs(ft.sbmoe_candidates(study.promote))
    plain = (f"plain fine-tuning at {len(lrs)} encoder learning rates ({', '.join(f'{lr:g}' for lr in lrs)}: tuned "
             "as much as SB-MoE, the one validation prefers tested)" if len(lrs) > 1 else "plain fine-tuning")
    grid = (f"every promoted configuration at each encoder learning rate of the shared grid "
            f"({', '.join(f'{lr:g}' for lr in ft.lr_grid)}), " if len(ft.lr_grid) > 1 else "")
    lines = ["", "## Stage 2: fine-tuning the promoted configurations", "",
             f"Per base model the top {study.promote} stage-1 configurations ({grid}head at its own moe_lr), "
             f"{ft.controls} random control(s) and {plain}"
             f"{' (fewer where the budget said so, below)' if dropped else ''}, each fine-tuned with its encoder "
             f"(lr {ft.lr_grid[0]:g} unless named) for at most {ft.epochs} epoch(s) "
             f"({stopping(ft)}; schedule {ft.schedule}) on {where(study)}, {result.seeds} seed(s) "
             f"({result.seeds_why}); ranked by `{objective2}` (mean over seeds). Time: "
             + ", ".join(f"{k} {v / 60:.1f} min" for k, v in result.seconds.items()) + ".", ""]
    if result.plan_text:
        lines += [result.plan_text, ""]
    for plan in result.summary.get("power_plan", []):
        lines += ["Planned before stage 2 (from stage 1's claim; printed before it ran):", "", "```",
                  *PowerPlan(**plan).lines(), "```", ""]
    header = ["base_model", "role", "config", f"stage 1 {study.proxy.objective}", f"stage 2 {objective2}",
              "stage 2 val nDCG@10", "seeds"]
    rows = [{**r, f"stage 1 {study.proxy.objective}": r["stage1_objective"], f"stage 2 {objective2}":
             r["stage2_objective"], "stage 2 val nDCG@10": r["stage2_val_ndcg@10"]} for r in result.configurations]
    lines += markdown_table(rows, header)
    lines += ["", "Does the proxy rank like fine-tuning? (Kendall's τ with its exact p over the promoted and control "
              "configurations, Spearman's ρ, top-k recall of the promoted among stage 2's top k, regret of the "
              "proxy's first pick in stage 2's objective)", ""]
    lines += [agreement_line(a) for a in result.agreement.values()]
    lines += ["", "![stage agreement](stage_agreement.png)", "", confirmation_line(result.training_seeds), "",
              "Test nDCG@10 of the configuration chosen by stage 2 against plain fine-tuning (mean over seeds; p "
              "adjusted over this stage's comparisons):", ""]
    lines += answer_table(result.summary, datasets) + [""]
    lines += attribution_lines(result.summary.get("attribution", {}))
    lines += evidence_lines(result.summary, result.agreement, result.plan, result.training_seeds)
    lines += curves_section(result, study.finetune_stage().mode, objective2, layout.report_dir,
                            study.finetune.schedule)
    return lines + routing_section(result.summary.get("routing", {}), layout.report_dir, "routing_finetune.png")


def curves_section(result: FinetuneResult, mode: str, metric: str, folder, schedule: str | None = None) -> list[str]:
    """Stage 2's learning curves: how each run ended, where it flattened, and the figure."""
    roles = {r["group"]: (r["base_model"], r["role"]) for r in result.configurations if "group" in r}
    records = [*result.records, *result.confirmed]
    # the attribution controls are built from the choice at confirmation: their groups are their own
    roles.update({r.group: (r.params.get("base_model", "?"), ARMS[r.params["arm"]].label) for r in records
                  if r.params.get("arm") in ARMS})
    rows = curve_rows(records, roles, metric, mode)
    if not rows:
        return []
    figures.save(learning_curves_figure(records, roles, metric), folder / "learning_curves.png")
    return ["## Stage 2 learning curves", "", *curve_lines(rows, metric, schedule), "",
            "![learning curves](learning_curves.png)", ""]


def _ci(interval: list[float]) -> str:
    low, high = interval
    return "" if math.isnan(low) else f" [{low:+.2f}, {high:+.2f}]"


def agreement_line(a: dict[str, Any]) -> str:
    """One base model's proxy check: τ with its exact p (an interval only where the bootstrap means something)."""
    quality = (f", top-{a['k']} recall {a['top_k_recall']:.2f}, regret {a['regret']:.4f}"
               if "k" in a and not math.isnan(a["top_k_recall"]) else "")
    return (f"- τ = {a['kendall_tau']:+.2f}{_ci(a['kendall_tau_ci'])} (exact p = {a['kendall_tau_p']:.2g}), "
            f"ρ = {a['spearman_rho']:+.2f}{_ci(a['spearman_rho_ci'])} over {a['configurations']} configurations"
            f"{quality}. {a['verdict']}")


def write_report(study: StudyConfig, proxy: StageResult, finetune: FinetuneResult | None = None,
                 stage2_not_run: dict | None = None) -> None:
    """``<study>/report/report.md`` with its PNGs, and ``summary.json``: stage 1, and stage 2 once it ran (or
    why it did not: ``stage2_not_run``, ``{"reason": sentence, "plan": the budget's plan}``)."""
    layout = study.layout
    layout.report_dir.mkdir(parents=True, exist_ok=True)
    lines = proxy_section(study, proxy, layout)
    summary = {"regime": {"finetune_trained_layers": study.finetune.trained_layers,
                          "label": study.depth_label() if study.promote else "stage 1 only"}, **proxy.summary}
    if stage2_not_run:
        lines += not_run_lines(stage2_not_run["reason"])
        summary["finetune"] = {"not_run": stage2_not_run}
    if finetune is not None:
        lines += finetune_section(study, finetune, layout)
        summary["finetune"] = finetune.summary_entry()
    answer = (finetune.summary if finetune is not None else proxy.summary).get("primary") or []
    lines[4:4] = ["## The answer", "", *claim_lines(answer)] if answer else []
    layout.summary_file.write_text(json.dumps(summary, indent=2, default=str))
    layout.report_file.write_text("\n".join(lines) + "\n")
