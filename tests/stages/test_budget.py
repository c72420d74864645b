"""Stage 2 planned to a time budget: what is dropped first, what always runs, what the plan says."""

from __future__ import annotations

import math

from sbmoe_ray.stages.budget import BudgetPlan, ModelCosts, make_plan, priority
from sbmoe_ray.study.points import Promotion


def entries(models=("a", "b"), promoted=2, controls=2) -> list[Promotion]:
    out = []
    for m in models:
        out += [Promotion(m, "promoted", {}, f"{m}p{i}") for i in range(1, promoted + 1)]
        out += [Promotion(m, "control", {}, f"{m}c{i}") for i in range(1, controls + 1)]
        out.append(Promotion(m, "baseline", {}))
    return out


def costs(trial_s=60.0, test_s=120.0) -> dict[str, ModelCosts]:
    return {m: ModelCosts(1.0, 1000.0, 2000.0, trial_s, test_s) for m in ("a", "b")}


def test_the_drop_order_alternates_base_models_and_reads_promoted_and_controls_interleaved_from_the_end():
    order = [e.stage1_group for e in priority(entries())]
    # per model the kept order is p1, c1, p2, c2: dropped from its end, the models in turn; p1 and baselines never
    assert order == ["ac2", "bc2", "ap2", "bp2", "ac1", "bc1"]


def test_a_plan_that_fits_drops_nothing_and_its_estimate_adds_up():
    plan = make_plan(entries(), 2, costs(), budget_s=10_000, spent_s=100, cores=2)
    assert plan.dropped == [] and plan.seeds == 2 and len(plan.kept) == 10
    assert plan.estimate_s["training"] == 10 * 60.0 * 2
    assert plan.estimate_s["test"] == 2 * 2 * 120.0 * 2 / 2            # 2 models x (chosen + baseline) x 2 seeds
    assert plan.estimate_s["total"] == 100 + plan.estimate_s["training"] + plan.estimate_s["test"]


def test_over_budget_seeds_go_first_then_entries_until_the_estimate_fits():
    # 2 seeds: 1200 s training + 480 s test + 100 spent = 1780; 1 seed: 600 + 240 + 100 = 940
    plan = make_plan(entries(), 2, costs(), budget_s=900, spent_s=100, cores=2)
    assert plan.seeds == 1 and plan.dropped_seeds == 2
    assert [e.stage1_group for e in plan.dropped] == ["ac2"]          # 940 - 60 = 880 <= 900
    assert plan.estimate_s["total"] <= 900 and "dropped to fit" in plan.summary_line()


def test_whole_base_models_go_last_and_stage_2_runs_nothing_when_even_its_least_exceeds_the_budget():
    # 2 x (top + baseline) = 4 x 60 s training + 2 x 2 x 120 / 2 test = 480 s; one base model: 240 s
    plan = make_plan(entries(), 1, costs(), budget_s=300, spent_s=0, cores=2)
    assert {(e.base_model, e.role) for e in plan.kept} == {("a", "promoted"), ("a", "baseline")}
    assert {("b", "promoted", "bp1"), ("b", "baseline", None)} <= {(e.base_model, e.role, e.stage1_group)
                                                                   for e in plan.dropped}
    assert not plan.runs_nothing
    plan = make_plan(entries(), 1, costs(), budget_s=200, spent_s=0, cores=2)     # the least needs 240 s
    assert plan.runs_nothing and plan.kept == [] and len(plan.dropped) == len(entries())
    assert plan.estimate_s["total"] == 240                                      # what the least would need
    line = plan.summary_line()
    assert "stage 2 is not run and the answer is stage 1's" in line and "--set budget_minutes=9" in line
    assert plan.not_run()["reason"] == line.removeprefix("[plan] ")
    assert BudgetPlan.from_dict(plan.to_dict()).runs_nothing
    assert not math.isnan(plan.estimate_s["total"])


def test_a_plan_is_written_and_read_back_as_it_was():
    plan = make_plan(entries(), 2, costs(), budget_s=900, spent_s=100, cores=2)
    again = BudgetPlan.from_dict(plan.to_dict())
    assert again == plan and again.summary_line() == plan.summary_line()
    assert "replicates beyond 1" in plan.sentence(600.0) and "then took 10.0 min" in plan.sentence(600.0)


def with_arms(models=("a", "b")) -> list[Promotion]:
    return entries(models) + [Promotion(m, role, {}, f"{m}p1") for m in models
                              for role in ("dense adapter", "random routing")]


def test_attribution_controls_are_dropped_after_the_proxy_checks_breadth_random_routing_first():
    order = [(e.base_model, e.role) for e in priority(with_arms())]
    assert [e.stage1_group for e in priority(with_arms())][:6] == ["ac2", "bc2", "ap2", "bp2", "ac1", "bc1"]
    assert order[6:] == [("a", "random routing"), ("b", "random routing"), ("a", "dense adapter"),
                         ("b", "dense adapter")]


def test_confirmation_seeds_are_planned_trained_and_tested_and_go_last_one_at_a_time():
    plan = make_plan(with_arms(), 1, costs(), budget_s=10_000, spent_s=0, cores=2, confirm=3)
    # 2 models: 5 selection runs each (the 2 attribution controls are built from the choice at confirmation), then
    # (chosen + baseline + 2 controls) x 3 fresh seeds trained and tested
    assert plan.confirm_seeds == 3 and plan.dropped_confirm is None
    assert plan.estimate_s["training"] == 2 * 5 * 60.0 + 2 * 4 * 3 * 60.0
    assert plan.estimate_s["test"] == 2 * 4 * 3 * 120.0 / 2
    tight = make_plan(with_arms(), 1, costs(), budget_s=2 * 2 * 60.0 + 2 * 2 * 2 * 60.0 + 2 * 2 * 2 * 120.0 / 2,
                      spent_s=0, cores=2, confirm=3)
    assert {e.role for e in tight.kept} == {"promoted", "baseline"}        # every droppable entry went first
    assert tight.confirm_seeds == 2 and tight.dropped_confirm == 3
    assert "confirmation seeds beyond 2 (of 3)" in tight.summary_line()
    assert BudgetPlan.from_dict(tight.to_dict()) == tight


def test_the_budget_drops_a_tuned_baseline_with_each_sb_moe_candidate_so_neither_arm_is_tuned_more():
    tuned = entries(models=("a",), promoted=2, controls=2)
    tuned = [e for e in tuned if e.role != "baseline"] + [Promotion("a", "baseline", {"encoder_lr": lr})
                                                          for lr in (2e-5, 6e-6, 6e-5, 2e-6)]
    order = priority(tuned)
    assert [e.stage1_group or e.params["encoder_lr"] for e in order] == ["ac2", 2e-6, "ap2", 6e-5, "ac1", 6e-6]
    for dropped in range(0, len(order) + 1, 2):
        kept = [e for e in tuned if e not in order[:dropped]]
        assert sum(e.role == "baseline" for e in kept) == sum(e.role in ("promoted", "control") for e in kept)


def test_the_grid_of_encoder_rates_is_dropped_only_after_the_attribution_controls():
    top = [Promotion("a", "promoted", {"encoder_lr": lr}, "ap1") for lr in (2e-5, 2e-4)]
    plain = [Promotion("a", "baseline", {"encoder_lr": lr}) for lr in (2e-5, 2e-4, 6.3e-5)]
    entries = [*top, Promotion("a", "control", {}, "ac1"), *plain,
               Promotion("a", "dense adapter", {}), Promotion("a", "random routing", {})]
    order = [(e.role, e.params.get("encoder_lr")) for e in priority(entries)]
    assert order == [("control", None), ("baseline", 6.3e-5), ("random routing", None), ("dense adapter", None),
                     ("promoted", 2e-4), ("baseline", 2e-4)]


def test_after_the_selection_the_dropped_controls_come_back_as_far_as_the_measured_trials_allow():
    from sbmoe_ray.stages.confirm_plan import ConfirmationPlan, plan_confirmation

    arms = with_arms(models=("a",))
    tight = make_plan(arms, 1, costs(), budget_s=900.0, spent_s=0, cores=2, confirm=3)   # the least: 840 s
    assert {e.role for e in tight.dropped} >= {"dense adapter", "random routing"}
    # one confirmation model costs 3 seeds x (trial + test 120 s / 2 evaluations at once); 2 are always tested
    per_model = 3 * (20.0 + 60.0)
    room = tight.budget_s - 2 * per_model
    back = plan_confirmation(tight, {"a": 20.0}, spent_s=room - per_model - 1.0)    # room for exactly one more
    assert [e.role for e in back.admitted] == ["dense adapter"]                  # the decisive control first
    assert [e.role for e in back.dropped] == ["random routing"]
    assert back.estimate_s == 3 * per_model
    both = plan_confirmation(tight, {"a": 5.0}, spent_s=0.0)                    # 4 x 3 x (5 + 60) s fit
    assert [e.role for e in both.admitted] == ["dense adapter", "random routing"] and not both.dropped
    slow = plan_confirmation(tight, {"a": 600.0}, spent_s=0.0)                   # measured slower than planned
    assert not slow.admitted and "still dropped" in slow.summary_line()
    assert ConfirmationPlan.from_dict(back.to_dict()) == back
    assert "re-admitted: a dense adapter" in back.summary_line()
