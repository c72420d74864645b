"""Stage 2's learning curves: the step where a curve flattened, a run still improving named as such, and
the figure and the rows per trial from records."""

from __future__ import annotations

from sbmoe_ray.analysis.curves import curve_lines, curve_rows, flattened_step, learning_curves_figure
from sbmoe_ray.analysis.records import TrialRecord, group_key


def record(trial_id: str, params: dict, losses: list[float], stopped: bool, seed: int = 0) -> TrialRecord:
    history = [{"epoch": e, "steps_done": 10 * (e + 1), "val_loss": v,
                "stopped_early": float(stopped and e == len(losses) - 1)} for e, v in enumerate(losses)]
    return TrialRecord(trial_id, params, "val_loss", {}, [], history, "live", seed)


def test_a_curve_flattened_at_the_first_validation_within_95_percent_of_its_improvement():
    points = [(10, 2.0), (20, 1.2), (30, 1.04), (40, 1.0), (50, 1.01)]
    assert flattened_step(points, "min") == 30               # 1.04 went 96 % of the way from 2.0 to 1.0
    assert flattened_step([(10, 2.0), (20, 1.5), (30, 1.06), (40, 1.0), (50, 1.1)], "min") == 40   # 94 %
    assert flattened_step([(10, 0.2), (20, 0.4), (30, 0.39)], "max") == 20
    assert flattened_step([(10, 2.0), (20, 1.5), (30, 1.0)], "min") is None       # best is last: still improving
    assert flattened_step([(10, 2.0)], "min") is None


def test_rows_say_how_each_run_ended_and_the_report_names_runs_still_improving():
    plain, moe = {"base_model": "m", "num_experts": 0}, {"base_model": "m", "num_experts": 3}
    roles = {group_key(plain): ("m", "baseline"), group_key(moe): ("m", "promoted")}
    records = [record("a", plain, [2.0, 1.0, 1.0, 1.0], stopped=True), record("b", moe, [2.0, 1.5, 1.2], stopped=False)]
    rows = curve_rows(records, roles, "val_loss", "min")
    assert [(r["role"], r["steps"], r["stopped"], r["best_step"], r["flattened_step"]) for r in rows] == [
        ("baseline", 40, "patience", 20, 20), ("promoted", 30, "cap", 30, None)]
    text = "\n".join(curve_lines(rows, "val_loss"))
    assert "still improving" in text and "1 of 2 runs were still improving" in text
    assert "longer cap" not in text                          # the schedule unknown: no claim about the cap
    constant = "\n".join(curve_lines(rows, "val_loss", "constant"))
    assert "1 of 2 runs stopped by their rule" in constant and "the other 1 ended at the cap" in constant
    fig = learning_curves_figure(records, roles, "val_loss")
    assert len(fig.axes[0].lines) == 2 and fig.axes[0].get_xlabel() == "optimizer steps"


def test_a_run_with_the_rules_history_is_still_improving_only_if_its_last_validation_reset_the_patience():
    moe = {"base_model": "m", "num_experts": 3}
    roles = {group_key(moe): ("m", "promoted")}
    # raw values still falling at the cap, but the last two falls were within the noise threshold (since_best 1, 2)
    noisy = record("n", moe, [2.0, 1.5, 1.49, 1.48], stopped=False)
    for row, since in zip(noisy.history, [0, 0, 1, 2]):
        row["since_best"] = since
    (row,) = curve_rows([noisy], roles, "val_loss", "min")
    assert row["flattened_step"] is None and not row["improving"]       # the curve's last point is its lowest
    noisy.history[-1]["since_best"] = 0
    assert curve_rows([noisy], roles, "val_loss", "min")[0]["improving"]
