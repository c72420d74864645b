"""Stage 2 in the report: what was fine-tuned, what it chose, its test comparison, and the proxy's check.

Appends a section to ``<study>/report/report.md`` and a ``finetune`` entry to ``summary.json``: every
stage-2 configuration (role, stage-1 objective, stage-2 objective and validation nDCG@10, mean over
seeds), the configuration chosen per base model by the stage-2 objective with its test comparison against
plain fine-tuning (intervals over queries and seeds, p adjusted over the stage's comparisons:
:mod:`sbmoe_ray.analysis.comparisons`), Kendall's τ and Spearman's ρ between the stages with their intervals and a
one-sentence verdict per base model (:mod:`sbmoe_ray.stages.promotion`), and the wall time of each stage.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sbmoe_ray.analysis.comparisons import study_summary  # noqa: E402
from sbmoe_ray.analysis.agreement import rank_agreement, verdict  # noqa: E402
from sbmoe_ray.analysis.report import SUMMARY_COLUMNS, summary_rows  # noqa: E402
from sbmoe_ray.analysis.records import ConfigGroup, group_key, group_trials, load_trials, nan_mean  # noqa: E402
from sbmoe_ray.study.space import label  # noqa: E402
from sbmoe_ray.study.config import StudyConfig  # noqa: E402


def configuration_rows(entries: list[dict[str, Any]], groups: dict[str, ConfigGroup]) -> list[dict[str, Any]]:
    """One row per promoted, control and baseline configuration, with both stages' objectives."""
    rows = []
    for entry in entries:
        group = groups.get(group_key(entry["params"]))
        records = group.records if group else []
        rows.append({"base_model": entry["base_model"], "role": entry["role"], "config": label(entry["params"]),
                     "stage1_objective": entry["stage1_objective"],
                     "stage2_objective": group.objective if group else math.nan,
                     "stage2_val_ndcg@10": nan_mean(r.best_metrics.get("val_ndcg@10", math.nan) for r in records),
                     "seeds": len(records)})
    return rows


def agreements(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per base model: τ and ρ between the stages over its promoted and control configurations."""
    out = {}
    for base_model in sorted({r["base_model"] for r in rows}):
        pairs = [(r["stage1_objective"], r["stage2_objective"]) for r in rows if r["base_model"] == base_model
                 and r["role"] != "baseline" and not math.isnan(r["stage1_objective"]) and not math.isnan(r["stage2_objective"])]
        agreement = rank_agreement([p[0] for p in pairs], [p[1] for p in pairs])
        out[base_model] = {**agreement, "verdict": verdict(agreement, base_model)}
    return out


def finetune_summary(study: StudyConfig, entries: list[dict[str, Any]], seconds: dict[str, float], seeds: int,
                     plan=None) -> dict[str, Any]:
    """Stage 2's machine-readable summary."""
    stage2 = study.finetune_study()
    groups = group_trials(load_trials(stage2.study_dir))
    rows = configuration_rows(entries, {g.key: g for g in groups})
    tested = [g for g in groups if g.tested]
    ft = study.finetune
    budget = {"configurations_planned": len(entries), "seeds": seeds, "epochs": ft.epochs,
              "workers": ft.num_workers, "encoder_lr": ft.encoder_lr}
    return {"configurations": rows, "agreement": agreements(rows), "seconds": seconds,
            "plan": asdict(plan) if plan is not None else None,
            "test": study_summary(tested, study.final_test_names, stage2.mode, stage2.search.objective, budget)}


def agreement_figure(rows: list[dict[str, Any]], objective: str, objective2: str):
    models = sorted({r["base_model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), squeeze=False, figsize=(4.4 * len(models), 3.4))
    for ax, model in zip(axes[0], models):
        for role, color in (("promoted", "tab:red"), ("control", "tab:gray")):
            mine = [r for r in rows if r["base_model"] == model and r["role"] == role]
            ax.scatter([r["stage1_objective"] for r in mine], [r["stage2_objective"] for r in mine], color=color,
                       label=role)
        base = [r["stage2_objective"] for r in rows if r["base_model"] == model and r["role"] == "baseline"]
        if base and not math.isnan(base[0]):
            ax.axhline(base[0], color="tab:blue", linestyle="--", label="plain fine-tuning")
        ax.set_xlabel(f"stage 1 (proxy) {objective}", fontsize=8)
        ax.set_ylabel(f"stage 2 (fine-tuned) {objective2}", fontsize=8)
        ax.set_title(model, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_finetune_section(study: StudyConfig, entries: list[dict[str, Any]], seconds: dict[str, float], seeds: int,
                           plan=None) -> dict:
    """Append stage 2 to the report (markdown, figure, summary.json); returns its summary."""
    folder = study.study_dir / "report"
    summary = finetune_summary(study, entries, seconds, seeds, plan)
    objective2 = study.finetune.objective
    fig = agreement_figure(summary["configurations"], study.search.objective, objective2)
    fig.savefig(folder / "stage_agreement.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    ft, datasets = study.finetune, study.final_test_names
    why = ft.replicates()[1] if seeds == ft.replicates()[0] else "fewer to fit budget_minutes"
    lines = ["", "## Stage 2: fine-tuning the promoted configurations", "",
             f"Per base model the top {study.promote} stage-1 configurations, {ft.controls} random control(s) and "
             f"plain fine-tuning{' (fewer where the budget said so, below)' if plan is not None and plan.dropped else ''}, "
             f"each fine-tuned with its encoder (lr {ft.encoder_lr:g}, head at its own moe_lr) "
             f"for {ft.epochs} epoch(s) on {ft.num_workers} Ray Train workers, {seeds} seed(s) ({why}); ranked by "
             f"`{objective2}` (mean over seeds). Time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items()) + ".", "",
             *([plan_line(plan, seconds), ""] if plan is not None else []),
             "| base_model | role | config | stage 1 " + study.search.objective + f" | stage 2 {objective2} | stage 2 val nDCG@10 | seeds |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['base_model']} | {r['role']} | {r['config']} | {r['stage1_objective']:.4f} | {r['stage2_objective']:.4f} "
              f"| {r['stage2_val_ndcg@10']:.4f} | {r['seeds']} |" for r in summary["configurations"]]
    lines += ["", "Does the proxy rank like fine-tuning? (Kendall's τ with its exact p and Spearman's ρ over the "
              "promoted and control configurations, 95 % percentile bootstrap intervals over configurations)", ""]
    for model, a in summary["agreement"].items():
        lines.append(f"- τ = {a['kendall_tau']:+.2f} {_ci(a['kendall_tau_ci'])} (p = {a['kendall_tau_p']:.2g}), "
                     f"ρ = {a['spearman_rho']:+.2f} {_ci(a['spearman_rho_ci'])} over {a['configurations']} "
                     f"configurations. {a['verdict']}")
    lines += ["", "![stage agreement](stage_agreement.png)", "", "Test nDCG@10 of the configuration chosen by stage 2 "
              "against plain fine-tuning (mean over seeds; p adjusted over this stage's comparisons):", ""]
    header = ["base_model", "best", "seeds", *[f"{d} {c}" for d in datasets for c in SUMMARY_COLUMNS]]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary_rows(summary["test"], datasets):
        lines.append("| " + " | ".join(f"{row[h]:.4f}" if isinstance(row.get(h), float) else str(row.get(h, ""))
                                        for h in header) + " |")
    with open(folder / "report.md", "a") as report:
        report.write("\n".join(lines) + "\n")
    path = folder / "summary.json"
    whole = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**whole, "finetune": summary}, indent=2, default=str))
    return summary


def plan_line(plan, seconds: dict[str, float]) -> str:
    """What the budget planned (:mod:`sbmoe_ray.stages.budget`), against what stage 2 then took."""
    text = plan.label().removeprefix("[plan] ")
    took = seconds.get("stage 2 training", math.nan)
    return (f"{text[0].upper()}{text[1:]} (costs measured here before stage 2, spread over {plan.cores} cores; "
            f"stage 2 training then took {took / 60:.1f} min).")


def _ci(interval: list[float]) -> str:
    low, high = interval
    return "[n/a]" if math.isnan(low) else f"[{low:+.2f}, {high:+.2f}]"
