"""The figures of a study's report: what people look at.

* expert load of a configuration: the share of each expert per epoch in training, and on each test corpus
  (every SB-MoE trial gets one, ``<study>/trial_figures``, logged to its MLflow run);
* experts x top-k heatmap of test nDCG@10 per dataset and base model (each cell shows the mean over seeds
  of its configuration chosen by the validation objective, never the best test value; "all" = all experts
  at inference);
* Optuna's fANOVA parameter importances for the objective per base model (over configurations, mean over
  seeds; pooled over base models the losses' scales would make ``base_model`` the only answer);
* the proxy check: stage 1's objective against stage 2's, per base model;
* the in-domain vs zero-shot Pareto front (:mod:`sbmoe_ray.analysis.pareto`);
* routing of the chosen configurations: query and relevant document in the same expert, against chance
  (:mod:`sbmoe_ray.analysis.routing`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sbmoe_ray.analysis.records import ConfigGroup, TrialRecord, baselines, best_group  # noqa: E402
from sbmoe_ray.study.space import PARAMS, label  # noqa: E402


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
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (RuntimeError, ValueError):
        return {}


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
            save(fig, path)
            files[record.trial_id].append(path)
    return files


def agreement_figure(rows, objective: str, objective2: str):
    """The proxy check: each configuration's stage-1 objective against its stage-2 objective, per base model
    (``rows``: :class:`~sbmoe_ray.analysis.summary.ConfigurationRow`)."""
    models = sorted({r.base_model for r in rows})
    fig, axes = plt.subplots(1, len(models), squeeze=False, figsize=(4.4 * len(models), 3.4))
    for ax, model in zip(axes[0], models):
        for role, color in (("promoted", "tab:red"), ("control", "tab:gray")):
            mine = [r for r in rows if r.base_model == model and r.role == role]
            ax.scatter([r.stage1_objective for r in mine], [r.stage2_objective for r in mine], color=color,
                       label=role)
        base = [r.stage2_objective for r in rows if r.base_model == model and r.role == "baseline"]
        if base and not math.isnan(base[0]):
            ax.axhline(base[0], color="tab:blue", linestyle="--", label="plain fine-tuning")
        ax.set_xlabel(f"stage 1 (proxy) {objective}", fontsize=8)
        ax.set_ylabel(f"stage 2 (fine-tuned) {objective2}", fontsize=8)
        ax.set_title(model, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def routing_figure(routing: dict[str, dict[str, Any]]):
    """Per base model's chosen configuration: how often a query and its relevant document share the top-1
    expert on each test set, against chance (independent pairing); None without recorded routing."""
    if not routing:
        return None
    fig, axes = plt.subplots(1, len(routing), squeeze=False, figsize=(4.4 * len(routing), 3.2))
    for ax, (model, r) in zip(axes[0], routing.items()):
        names = list(r["datasets"])
        x = np.arange(len(names))
        ax.bar(x - 0.2, [r["datasets"][d]["same_expert"] for d in names], 0.4, label="query & relevant doc")
        ax.bar(x + 0.2, [r["datasets"][d]["chance"] for d in names], 0.4, color="tab:gray", label="chance")
        ax.set_xticks(x, names, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("same top-1 expert", fontsize=8)
        nmi = "n/a" if math.isnan(r["nmi"]) else f"{r['nmi']:.2f}"
        ax.set_title(f"{model}\nNMI(expert, collection) {nmi}, effective experts {r['effective_experts']:.1f}"
                     f"/{r['num_experts']}", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save(fig, path: Path) -> None:
    """A figure as a PNG, then closed (matplotlib keeps open figures alive)."""
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
