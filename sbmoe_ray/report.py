"""What a study found, for people: the summary table, and a report (markdown + plots).

* the answer per base model (the configuration chosen by the validation objective, its test comparison
  with the baseline, corrected for all comparisons: :mod:`sbmoe_ray.comparisons`), also as summary.json,
* experts x top-k heatmap of test nDCG@10 per dataset and base model (each cell shows its trial chosen by
  the validation objective, never the best test value; "all" = all experts at inference),
* Optuna parameter importances for the objective (fANOVA, over the SB-MoE trials),
* expert load of the chosen trial: share of each expert per epoch in training, and on each test corpus,
  and the same figure for every SB-MoE trial (``<study>/trial_figures``, logged to each trial's run).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sbmoe_ray.comparisons import study_summary  # noqa: E402
from sbmoe_ray.results import TrialRecord, baselines, best_trial  # noqa: E402
from sbmoe_ray.search_space import PARAMS, describe  # noqa: E402
from sbmoe_ray.study_config import StudyConfig  # noqa: E402


def _shares(load: dict[str, float]) -> list[float]:
    return [load[f"expert_{i}.share"] for i in range(sum(1 for k in load if k.endswith(".share")))]


def expert_load_figure(history: list[dict[str, Any]], test: list[dict[str, Any]], title: str):
    """Per-expert share of routed examples: training (per epoch) and each test corpus; None without experts."""
    rows, labels = [], []
    for row in history:
        load = {k.removeprefix("train_load."): v for k, v in row.items() if k.startswith("train_load.")}
        if load:
            rows.append(_shares(load))
            labels.append(f"train epoch {row['epoch'] + 1}")
    for result in test:
        if result.get("corpus_expert_load"):
            rows.append(_shares(result["corpus_expert_load"]))
            labels.append(f"{result['dataset']} corpus")
    if not rows:
        return None
    matrix = np.array(rows)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * matrix.shape[1], 0.9 + 0.4 * len(rows)))
    image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=max(matrix.max(), 1e-9), aspect="auto")
    ax.set_xticks(range(matrix.shape[1]), [f"E{i}" for i in range(matrix.shape[1])])
    ax.set_yticks(range(len(labels)), labels)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="w" if value < matrix.max() / 2 else "k",
                fontsize=8)
    ax.set_title(f"expert load (share of top-k assignments)\n{title}", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04)
    return fig


def summary_rows(summary: dict, datasets: list[str]) -> list[dict[str, Any]]:
    """Per base model: baseline and the SB-MoE trial chosen by the objective, Δ nDCG@10 with its 95 %
    interval, raw and adjusted p (:func:`sbmoe_ray.comparisons.study_summary`)."""
    rows = []
    for answer in summary["per_base_model"]:
        row = {"base_model": answer["base_model"], "best": answer["chosen"]["config"], "trials": answer["trials"]}
        for dataset in datasets:
            c = answer["datasets"].get(dataset)
            if c:
                row.update({f"{dataset} base": c["baseline_mean"], f"{dataset} moe": c["moe_mean"],
                            f"{dataset} Δ": c["delta"], f"{dataset} CI": f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]",
                            f"{dataset} p": c["p_raw"], f"{dataset} p adj": c["p_adjusted"]})
        rows.append(row)
    return rows


SUMMARY_COLUMNS = ("base", "moe", "Δ", "CI", "p", "p adj")


def surviving(summary: dict, alpha: float = 0.05) -> str:
    """One sentence: which chosen configurations' differences survive the correction at ``alpha``."""
    kept = [f"{a['base_model']} on {d} ({c['delta']:+.3f})" for a in summary["per_base_model"]
            for d, c in a["datasets"].items() if c["p_adjusted"] < alpha]
    return (f"Budget: {summary['trials']} trials, {summary['seeds']} seed per configuration; {summary['method']}. "
            f"Differences of the chosen configurations that survive the correction at {alpha}: "
            + (", ".join(kept) if kept else "none") + ".")


def heatmap_figure(records: list[TrialRecord], dataset: str, mode: str = "min"):
    """Experts x top-k grid of test nDCG@10, one panel per base model (per cell, the trial with the best
    validation objective); column "all" = all experts at inference; titles carry the baseline."""
    moe = [r for r in records if not r.is_baseline]
    base_models = sorted({r.params["base_model"] for r in moe})
    experts = sorted({r.params["num_experts"] for r in moe})
    columns = sorted({str(r.params.get("top_k", 1)) for r in moe}) + (
        ["all"] if any(r.params.get("inference") == "all" for r in moe) else [])
    fig, axes = plt.subplots(1, len(base_models), squeeze=False,
                             figsize=(0.4 + (1.4 + 0.9 * len(columns)) * len(base_models), 1.2 + 0.5 * len(experts)))
    for ax, base_model in zip(axes[0], base_models):
        grid = np.full((len(experts), len(columns)), np.nan)
        cells: dict[tuple[int, int], list[TrialRecord]] = {}
        for r in moe:
            if r.params["base_model"] == base_model:
                column = "all" if r.params.get("inference") == "all" else str(r.params.get("top_k", 1))
                cells.setdefault((experts.index(r.params["num_experts"]), columns.index(column)), []).append(r)
        for (i, j), trials in cells.items():     # the cell's trial chosen by validation, never by test
            chosen = best_trial(trials, mode)
            grid[i, j] = chosen.mean(dataset) if chosen else np.nan
        image = ax.imshow(grid, cmap="magma", aspect="auto")
        ax.set_xticks(range(len(columns)), [c if c == "all" else f"top-{c}" for c in columns])
        ax.set_yticks(range(len(experts)), [f"{n} experts" for n in experts])
        for (i, j), value in np.ndenumerate(grid):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=8,
                        color="k" if image.norm(value) > 0.6 else "w")
        baseline = baselines(records).get(base_model)
        baseline = baseline.mean(dataset) if baseline else None
        ax.set_title(f"{base_model}" + (f" (baseline {baseline:.3f})" if baseline is not None else ""), fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.05)
    fig.suptitle(f"{dataset}: test nDCG@10 of each cell's trial chosen by the validation objective", fontsize=10)
    fig.tight_layout()
    return fig


def param_importances(records: list[TrialRecord], mode: str) -> dict[str, float]:
    """Optuna's fANOVA importances of the search parameters for the objective (empty if too few trials)."""
    import optuna

    moe = [r for r in records if not r.is_baseline and not math.isnan(r.objective)]
    if len(moe) < 3:
        return {}
    distributions = {p.name: p.distribution([r.params[p.name] for r in moe]) for p in PARAMS
                     if all(p.name in r.params for r in moe)}
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    for r in moe:
        study.add_trial(optuna.trial.create_trial(params={k: r.params[k] for k in distributions}, value=r.objective,
                                                  distributions=distributions))
    try:
        return optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError):
        return {}


def identical_ids_line(records: list[TrialRecord]) -> str:
    """How each test set treated a retrieved document whose id is the query's (from the trials' results)."""
    rules = {r["dataset"]: r.get("identical_ids", {}) for record in records for r in record.test}
    parts = [f"`{name}` {rule.get('rule', 'drop (0.1)')}, {rule.get('queries', 'all')} queries"
             for name, rule in sorted(rules.items())]
    return ("Identical-id rule (a retrieved document whose id is the query's is dropped only for queries that "
            "are corpus documents, same id and same text; `auto` decides from the data): " + "; ".join(parts) + ".")


def write_trial_figures(folder: Path, records: list[TrialRecord]) -> dict[str, list[Path]]:
    """The expert-load figure of every SB-MoE trial under ``folder``; with each trial's results file, the
    files to attach to its MLflow run."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for record in records:
        files[record.trial_id] = [record.file] if record.file else []
        fig = expert_load_figure(record.history, record.test, title=f"{record.trial_id}: {describe(record.params)}")
        if fig is not None:
            path = folder / f"{record.trial_id}_expert_load.png"
            fig.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            files[record.trial_id].append(path)
    return files


def write_report(study: StudyConfig, records: list[TrialRecord]) -> Path:
    """``<study>/report/report.md`` with its PNGs; returns the markdown path."""
    folder = study.study_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    datasets = study.test_names
    lines = [f"# Study `{study.name}`", "",
             f"{len(records)} finished trials; objective `{study.search.objective}` ({study.mode}) on the held-out "
             f"validation split of `{study.train.data.train_dataset}`; test metrics below.", ""]
    summary = study_summary(records, datasets, study.mode, study.search.objective)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    rows = summary_rows(summary, datasets)
    lines += [identical_ids_line(records), "", surviving(summary), ""] if records else []
    if rows:
        header = ["base_model", "best", *[f"{d} {c}" for d in datasets for c in SUMMARY_COLUMNS]]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in rows:
            lines.append("| " + " | ".join(f"{row.get(h, float('nan')):.4f}" if isinstance(row.get(h), float)
                                            else str(row.get(h, "")) for h in header) + " |")
        lines.append("")
    for dataset in datasets:
        if any(not r.is_baseline for r in records):
            fig = heatmap_figure(records, dataset, study.mode)
            fig.savefig(folder / f"heatmap_{dataset}.png", dpi=110, bbox_inches="tight")
            plt.close(fig)
            lines += [f"![{dataset} heatmap](heatmap_{dataset}.png)", ""]
    importances = param_importances(records, study.mode)
    if importances:
        fig, ax = plt.subplots(figsize=(5, 0.5 + 0.4 * len(importances)))
        ax.barh(list(importances)[::-1], list(importances.values())[::-1], color="tab:blue")
        ax.set_xlabel(f"importance for {study.search.objective} (fANOVA)")
        fig.savefig(folder / "importances.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        lines += ["## Parameter importances", "", "![importances](importances.png)", ""]
    best = best_trial(records, study.mode)
    if best is not None:
        fig = expert_load_figure(best.history, best.test, title=f"best trial {best.trial_id}: {describe(best.params)}")
        fig.savefig(folder / "expert_load_best.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        lines += ["## Expert load of the best trial", "", "![expert load](expert_load_best.png)", ""]
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    return path
