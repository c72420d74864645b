"""The attribution controls are one table: an arm added to it alone is accepted by the config, promoted, planned
and dropped by the budget in its rank, built into its model, named in the report and coloured in the curves."""

from __future__ import annotations

from sbmoe_ray.analysis.attribution import attribution_lines
from sbmoe_ray.analysis.curves import role_color
from sbmoe_ray.analysis.records import group_trials
from sbmoe_ray.stages.budget import ModelCosts, make_plan, priority
from sbmoe_ray.stages.promotion import controls_of, promotions
from sbmoe_ray.study.arms import ARMS, Arm, control_params
from sbmoe_ray.study.space import apply, label
from sbmoe_ray.study.stage import FinetuneConfig
from sbmoe_ray.train.config import TrainConfig

from helpers import proxy_trials


def test_an_arm_added_to_the_table_alone_reaches_the_plan_the_drop_order_the_report_and_the_curves(monkeypatch):
    fake = Arm("no_noise", "no noise", lambda p: dict(p), lambda p: {"noisy_gating": False}, 0, "the gate's noise",
               "tab:pink")
    monkeypatch.setitem(ARMS, "no_noise", fake)
    FinetuneConfig(attribution=["dense_adapter", "no_noise"]).validate()
    groups = group_trials(proxy_trials())
    entries = promotions(groups, "min", promote=1, controls=1, seed=0, arms=["dense_adapter", "no_noise"])
    assert [e.role for e in entries][-2:] == ["dense adapter", "no noise"]
    order = [e.role for e in priority(entries)]
    assert order.index("no noise") < order.index("dense adapter")            # drop rank 0 goes first
    costs = {"m": ModelCosts(1.0, 1.0, 1.0, trial_s=100.0, test_s=10.0)}
    plan = make_plan(entries, 1, costs, budget_s=10_000, spent_s=0, cores=2, confirm=3)
    assert "no noise" in {e.role for e in plan.kept}
    budget = plan.estimate_s["total"]
    while not {"no noise", "dense adapter"} & {e.role for e in make_plan(entries, 1, costs, budget, 0, 2, 3).dropped}:
        budget -= 50
    dropped = [e.role for e in make_plan(entries, 1, costs, budget, 0, 2, 3).dropped]
    assert "no noise" in dropped and "dense adapter" not in dropped         # the first control the budget drops
    chosen = groups[1]
    built = controls_of(entries, {"m": chosen})
    params = next(e.params for e in built if e.role == "no noise")
    assert params == control_params("no_noise", chosen.params) and label(params).endswith("(no noise)")
    assert apply(TrainConfig(), params).model.noisy_gating is False
    row = {"dataset": "a", "against": "no_noise", "delta": 0.01, "ci_low": -0.01, "ci_high": 0.03, "verdict": "x"}
    lines = attribution_lines({"m": {"rows": [row], "credit": {}}})
    assert any("| no noise |" in line for line in lines)
    assert role_color("no noise") == "tab:pink" and role_color("baseline") == "tab:blue"
