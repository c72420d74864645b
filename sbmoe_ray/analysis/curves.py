"""Learning curves of stage 2: did each fine-tuning converge before it was compared?

A comparison between fine-tuned retrievers is only as good as their training: issue 22 found stage 2
comparing SB-MoE with plain fine-tuning after 12 optimizer steps, well before either flattened. Every
stage-2 trial validates once per epoch (:mod:`sbmoe_ray.train.stopping`); its history gives the validation
objective against optimizer steps. Per trial this module reports how far it ran, whether it stopped on its
patience (converged by the declared criterion) or at the cap (maybe not), the step of its best checkpoint,
and the step where its curve **flattened**: the first validation that reached 95 % of the improvement from
its first validation to its best. A run whose best is its last validation has not flattened: the report says
so, and a claim that rests on it is weaker than its interval.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sbmoe_ray.analysis.records import TrialRecord, group_key  # noqa: E402
from sbmoe_ray.study.arms import labels

ROLE_COLORS = {"baseline": "tab:blue", "promoted": "tab:red", "control": "tab:gray"}


def role_color(role: str) -> str:
    """A role's colour in the curves: the fixed roles', an attribution control's from its table entry."""
    arm = labels().get(role)
    return arm.color if arm else ROLE_COLORS.get(role, "black")


def curve(record: TrialRecord, metric: str) -> list[tuple[int, float]]:
    """(optimizer steps, validation value) after each epoch of a trial."""
    points = []
    for row in record.history:
        value = row.get(metric)
        if value is not None and not math.isnan(value):
            points.append((int(row.get("steps_done", row["epoch"] + 1)), float(value)))
    return points


def flattened_step(points: list[tuple[int, float]], mode: str, share: float = 0.95) -> int | None:
    """The first step that reached ``share`` of the improvement from the first validation to the best; None
    when the best is the last validation (still improving) or there is only one point."""
    if len(points) < 2:
        return None
    sign = 1.0 if mode == "min" else -1.0
    best_index = min(range(len(points)), key=lambda i: sign * points[i][1])
    if best_index == len(points) - 1:
        return None
    first, best = points[0][1], points[best_index][1]
    target = first + share * (best - first)
    return next(step for step, value in points if sign * (value - target) <= 0)


def curve_rows(records: list[TrialRecord], roles: dict[str, tuple[str, str]], metric: str,
               mode: str) -> list[dict[str, Any]]:
    """One row per trial: base model, role, seed, steps run, how it stopped, best and flattened step."""
    rows = []
    for record in sorted(records, key=lambda r: (roles.get(group_key(r.params), ("", ""))[0], r.trial_id)):
        base_model, role = roles.get(group_key(record.params), ("?", "?"))
        points = curve(record, metric)
        if not points:
            continue
        stopped = bool(record.history and record.history[-1].get("stopped_early"))
        best_step = min(points, key=lambda p: (1.0 if mode == "min" else -1.0) * p[1])[0]
        # Still improving: by the stopping rule where the run has one (its last validation improved by more than
        # its threshold, so patience had not begun), else by the curve (its best is its last validation)
        flat = flattened_step(points, mode)
        rule = record.history[-1].get("since_best")
        improving = (not stopped and rule == 0) if rule is not None else flat is None
        rows.append({"base_model": base_model, "role": role, "seed": record.seed, "steps": points[-1][0],
                     "stopped": "patience" if stopped else "cap", "best_step": best_step,
                     "flattened_step": flat, "improving": improving, "trial": record.trial_id})
    return rows


def curve_lines(rows: list[dict[str, Any]], metric: str, schedule: str | None = None) -> list[str]:
    """The report's sentences: per trial, how it ended; then which runs had not flattened, and (with a constant
    learning rate, which does not depend on the cap) which runs a longer cap would leave exactly as they are."""
    if not rows:
        return []
    lines = [f"Learning curves (validation `{metric}` after each epoch, against optimizer steps): a run ends on its "
             "patience (converged by the declared criterion) or at the epoch cap; it *flattened* at the first "
             "validation within 95 % of its improvement from the first validation to the best.", ""]
    for r in rows:
        flat = ("**still improving**" if r["improving"] else f"flattened at step {r['flattened_step']}"
                if r["flattened_step"] else "its last gains within its noise threshold")
        lines.append(f"- {r['base_model']} {r['role']} (seed {r['seed']}): {r['steps']} steps, stopped by "
                     f"{r['stopped']}, best at step {r['best_step']}, {flat}")
    open_runs = [r for r in rows if r["improving"]]
    if open_runs:
        lines += ["", f"{len(open_runs)} of {len(rows)} runs were still improving when they stopped: their "
                  "comparisons are of runs that had not converged (raise finetune.epochs)."]
    ruled = sum(r["stopped"] == "patience" for r in rows)
    if schedule == "constant":
        lines += ["", f"{ruled} of {len(rows)} runs stopped by their rule (at the cap or before it); the learning rate "
                  "is constant after warm-up, so these runs train identically under any longer cap (doubling it "
                  f"changes none of them); the other {len(rows) - ruled} ended at the cap with patience left."]
    return lines


def learning_curves_figure(records: list[TrialRecord], roles: dict[str, tuple[str, str]], metric: str):
    """Validation ``metric`` against optimizer steps, per base model, a line per trial coloured by role."""
    models = sorted({roles.get(group_key(r.params), ("?", "?"))[0] for r in records})
    fig, axes = plt.subplots(1, max(1, len(models)), squeeze=False, figsize=(4.6 * max(1, len(models)), 3.4))
    for ax, model in zip(axes[0], models):
        shown = set()
        for record in records:
            base_model, role = roles.get(group_key(record.params), ("?", "?"))
            points = curve(record, metric)
            if base_model != model or not points:
                continue
            ax.plot(*zip(*points), marker=".", color=role_color(role), alpha=0.8,
                    label=None if role in shown else role)
            shown.add(role)
        ax.set_xlabel("optimizer steps", fontsize=8)
        ax.set_ylabel(f"validation {metric}", fontsize=8)
        ax.set_title(model, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
