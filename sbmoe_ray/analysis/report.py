"""What a study found, for people: the summary table, and a report (markdown + plots).

* the answer per base model (the configuration chosen by its mean validation objective over seeds, its
  test comparison with the baseline with query and seed intervals, corrected for all comparisons:
  :mod:`sbmoe_ray.analysis.comparisons`), the budget, and which conclusions survive; also as summary.json,
* experts x top-k heatmap of test nDCG@10 per dataset and base model (each cell shows the mean over seeds
  of its configuration chosen by the validation objective, never the best test value; "all" = all
  experts at inference),
* Optuna parameter importances for the objective per base model (fANOVA over configurations, mean over
  seeds; pooled over base models the losses' scales would make ``base_model`` the only answer),
* expert load of each chosen configuration: share of each expert per epoch in training, and on each test
  corpus, and the same figure for every SB-MoE trial (``<study>/trial_figures``, logged to its run).
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

from sbmoe_ray.analysis.comparisons import study_summary  # noqa: E402
from sbmoe_ray.analysis.pareto import pareto_figure, pareto_lines, pareto_summary  # noqa: E402
from sbmoe_ray.analysis.records import ConfigGroup, TrialRecord, baselines, best_group, group_trials  # noqa: E402
from sbmoe_ray.study.space import BY_NAME, PARAMS, label  # noqa: E402
from sbmoe_ray.study.config import StudyConfig  # noqa: E402


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


def _interval(low: float, high: float) -> str:
    return "n/a" if math.isnan(low) else f"[{low:+.3f}, {high:+.3f}]"


def summary_rows(summary: dict, datasets: list[str]) -> list[dict[str, Any]]:
    """Per base model: baseline and the SB-MoE configuration chosen by the objective (mean over seeds),
    Δ nDCG@10 with its query and seed intervals, raw and adjusted p (:func:`~sbmoe_ray.analysis.comparisons.study_summary`)."""
    rows = []
    for answer in summary["per_base_model"]:
        chosen = answer["chosen"]
        row = {"base_model": answer["base_model"], "best": chosen["config"], "seeds": len(chosen["seeds"])}
        for dataset in datasets:
            c = answer["datasets"].get(dataset)
            if c:
                row.update({f"{dataset} base": c["baseline_mean"], f"{dataset} moe": c["moe_mean"],
                            f"{dataset} Δ": c["delta"], f"{dataset} CI": _interval(c["ci_low"], c["ci_high"]),
                            f"{dataset} seed CI": _interval(c["seed_ci_low"], c["seed_ci_high"]),
                            f"{dataset} p": c["p_raw"], f"{dataset} p adj": c["p_adjusted"]})
        rows.append(row)
    return rows


SUMMARY_COLUMNS = ("base", "moe", "Δ", "CI", "seed CI", "p", "p adj")


def budget_line(summary: dict) -> str:
    b = summary["budget"]
    return (f"Budget: {b['configurations']} configurations (baselines included) x {b['seeds']} seed(s) = "
            f"{b['trials']} trials of {b['epochs']} epoch(s) each.")


def surviving(summary: dict, alpha: float = 0.05) -> str:
    """One sentence: which chosen configurations' differences survive the correction at ``alpha`` (and
    whether their seed interval also stays on one side of 0)."""
    kept = [f"{a['base_model']} on {d} ({c['delta']:+.3f}"
            + ("" if math.isnan(c["seed_ci_low"]) or c["seed_ci_low"] * c["seed_ci_high"] > 0
               else ", but its seed interval includes 0") + ")"
            for a in summary["per_base_model"] for d, c in a["datasets"].items() if c["p_adjusted"] < alpha]
    return (f"{budget_line(summary)} Method: {summary['method']}. Differences of the chosen configurations that "
            f"survive the correction at {alpha}: " + (", ".join(kept) if kept else "none") + ".")


def _cell(group: ConfigGroup) -> str:
    return "all" if group.params.get("inference") == "all" else str(group.params.get("top_k", 1))


def heatmap_figure(groups: list[ConfigGroup], dataset: str, mode: str = "min"):
    """Experts x top-k grid of test nDCG@10 (mean over seeds), one panel per base model (per cell, the
    configuration with the best mean validation objective); column "all" = all experts at inference."""
    moe = [g for g in groups if not g.is_baseline]
    base_models = sorted({g.base_model for g in moe})
    experts = sorted({g.params["num_experts"] for g in moe})
    columns = sorted({_cell(g) for g in moe} - {"all"}) + (["all"] if any(_cell(g) == "all" for g in moe) else [])
    fig, axes = plt.subplots(1, len(base_models), squeeze=False,
                             figsize=(0.4 + (1.4 + 0.9 * len(columns)) * len(base_models), 1.2 + 0.5 * len(experts)))
    for ax, base_model in zip(axes[0], base_models):
        grid = np.full((len(experts), len(columns)), np.nan)
        cells: dict[tuple[int, int], list[ConfigGroup]] = {}
        for g in moe:
            if g.base_model == base_model:
                cells.setdefault((experts.index(g.params["num_experts"]), columns.index(_cell(g))), []).append(g)
        for (i, j), members in cells.items():     # the cell's configuration chosen by validation, never by test
            chosen = best_group(members, mode)
            grid[i, j] = chosen.mean(dataset) if chosen else np.nan
        image = ax.imshow(grid, cmap="magma", aspect="auto")
        ax.set_xticks(range(len(columns)), [c if c == "all" else f"top-{c}" for c in columns])
        ax.set_yticks(range(len(experts)), [f"{n} experts" for n in experts])
        for (i, j), value in np.ndenumerate(grid):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=8,
                        color="k" if image.norm(value) > 0.6 else "w")
        baseline = baselines(groups).get(base_model)
        baseline = baseline.mean(dataset) if baseline else None
        ax.set_title(f"{base_model}" + (f" (baseline {baseline:.3f})" if baseline is not None else ""), fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.05)
    fig.suptitle(f"{dataset}: test nDCG@10 (mean over seeds) of each cell's configuration chosen by the validation "
                 "objective", fontsize=10)
    fig.tight_layout()
    return fig


def param_importances(groups: list[ConfigGroup], mode: str) -> dict[str, float]:
    """Optuna's fANOVA importances of the search parameters for the mean objective of the SB-MoE
    configurations given (one base model's: empty if fewer than 3; a parameter with one value is left out)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    moe = [g for g in groups if not g.is_baseline and not math.isnan(g.objective)]
    if len(moe) < 3:
        return {}
    distributions = {p.name: p.distribution([g.params[p.name] for g in moe]) for p in PARAMS
                     if all(p.name in g.params for g in moe) and len({str(g.params[p.name]) for g in moe}) > 1}
    if not distributions:
        return {}
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    for g in moe:
        study.add_trial(optuna.trial.create_trial(params={k: g.params[k] for k in distributions}, value=g.objective,
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
        fig = expert_load_figure(record.history, record.test, title=f"{record.trial_id}: {label(record.params)}")
        if fig is not None:
            path = folder / f"{record.trial_id}_expert_load.png"
            fig.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            files[record.trial_id].append(path)
    return files


def importance_figure(groups: list[ConfigGroup], mode: str, objective: str):
    """One bar panel per base model: fANOVA importances of its own configurations; None if none has any."""
    per_model = {m: param_importances([g for g in groups if g.base_model == m], mode)
                 for m in sorted({g.base_model for g in groups})}
    per_model = {m: v for m, v in per_model.items() if v}
    if not per_model:
        return None
    fig, axes = plt.subplots(1, len(per_model), squeeze=False, figsize=(4.2 * len(per_model), 2.4))
    for ax, (model, importances) in zip(axes[0], per_model.items()):
        ax.barh(list(importances)[::-1], list(importances.values())[::-1], color="tab:blue")
        ax.set_xlim(0, 1)
        ax.set_title(model, fontsize=9)
        ax.set_xlabel(f"importance for {objective} (fANOVA)", fontsize=8)
    fig.tight_layout()
    return fig


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_report(study: StudyConfig, records: list[TrialRecord]) -> Path:
    """``<study>/report/report.md`` with its PNGs and summary.json; returns the markdown path."""
    folder = study.study_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    datasets, groups = study.test_names, group_trials(records)
    lines = [f"# Study `{study.name}`", "",
             f"{len(records)} finished trials; objective `{study.search.objective}` ({study.mode}) on the held-out "
             f"validation split of `{study.train.data.train_dataset}`; test metrics below.", ""]
    summary = study_summary(groups, datasets, study.mode, study.search.objective, study.budget())
    zero_shot = study.train.data.zero_shot_validation
    if zero_shot:
        summary["pareto"] = pareto_summary(groups, study.mode, datasets)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    rows = summary_rows(summary, datasets)
    lines += [identical_ids_line(records), "", surviving(summary), ""] if records else []
    if rows:
        header = ["base_model", "best", "seeds", *[f"{d} {c}" for d in datasets for c in SUMMARY_COLUMNS]]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in rows:
            lines.append("| " + " | ".join(f"{row.get(h, float('nan')):.4f}" if isinstance(row.get(h), float)
                                            else str(row.get(h, "")) for h in header) + " |")
        lines.append("")
    if any(not g.is_baseline for g in groups):
        for dataset in datasets:
            _save(heatmap_figure(groups, dataset, study.mode), folder / f"heatmap_{dataset}.png")
            lines += [f"![{dataset} heatmap](heatmap_{dataset}.png)", ""]
    if zero_shot:
        _save(pareto_figure(groups, study.mode, study.search.objective, zero_shot), folder / "pareto.png")
        lines += pareto_lines(summary["pareto"], study.search.objective, zero_shot, datasets)
    fig = importance_figure(groups, study.mode, study.search.objective)
    if fig is not None:
        _save(fig, folder / "importances.png")
        lines += ["## Parameter importances (per base model)", "", "![importances](importances.png)", ""]
    for answer in summary["per_base_model"]:
        first = next(r for r in records if r.trial_id == answer["chosen"]["trial_ids"][0])
        fig = expert_load_figure(first.history, first.test, title=f"{answer['base_model']} chosen: "
                                 f"{answer['chosen']['config']} (seed {first.seed})")
        if fig is not None:
            name = f"expert_load_{BY_NAME['base_model'].show(answer['base_model'])}.png"
            _save(fig, folder / name)
            lines += [f"## Expert load of the chosen {answer['base_model']} configuration", "", f"![expert load]({name})", ""]
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    return path
