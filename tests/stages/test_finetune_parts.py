"""Stage 2's parts on hand-made records: what it trains as promoted or planned, what its test phase tests and
how a result is written back to its record, and its result rebuilt from what it left on disk."""

from __future__ import annotations

import json

from sbmoe_ray.analysis.records import TrialRecord, group_trials
from sbmoe_ray.analysis.result import analyze_proxy
from sbmoe_ray.stages.budget import ModelCosts, make_plan
from sbmoe_ray.stages.finetune import rebuild
from sbmoe_ray.stages.finetune_setup import power_plan_lines, setup_from_disk, setup_of
from sbmoe_ray.stages.promotion import promotions
from sbmoe_ray.stages.test_phase import add_results, chosen_groups, evaluation_config
from sbmoe_ray.study.config import StudyConfig
from sbmoe_ray.train.config import TrainConfig

from helpers import study


def hand_study(tmp_path, **finetune) -> StudyConfig:
    return StudyConfig.from_dict({"name": "hand", "storage_path": str(tmp_path / "studies"), "space": {
        "base_model": ["m"], "num_experts": [0, 3]}, "train": {"data": {"test_datasets": ["a", "b"]}},
        "finetune": {"seeds": 2, **finetune}})


def test_stage_two_trains_what_was_promoted_or_what_the_plan_kept(tmp_path):
    config = hand_study(tmp_path)
    proxy = analyze_proxy(config, study(seeds=2))
    entries = promotions(proxy.groups, "min", promote=2, controls=1, seed=0)
    setup = setup_of(config, proxy, entries, None)
    assert (setup.entries, setup.seeds, setup.why, setup.mode) == (entries, 2, "set", "min")
    costs = {"m": ModelCosts(1.0, 1.0, 1.0, trial_s=100.0, test_s=10.0)}
    plan = make_plan(entries, 2, costs, budget_s=250.0, spent_s=0.0, cores=2)
    setup = setup_of(config, proxy, entries, plan)
    assert setup.entries == plan.kept and len(setup.entries) < len(entries) and setup.seeds == 1
    assert setup.why == "set; 1 to fit budget_minutes" and setup.promoted == entries


def test_the_test_phase_tests_the_choice_and_the_baseline_and_writes_results_back(tmp_path):
    records = study(seeds=2)
    (chosen, baseline), = chosen_groups(records, "min").values()
    assert chosen.params["moe_lr"] == 1e-4 and baseline.is_baseline              # the lowest mean val_loss
    config = hand_study(tmp_path)
    record = chosen.records[0]
    record.config = TrainConfig().to_dict()
    record.file, record.best_checkpoint = str(tmp_path / "results.json"), str(tmp_path / "checkpoint")
    cfg, folder = evaluation_config(config, record)
    assert cfg.data.test_datasets == ["a", "b"] and folder == tmp_path / "checkpoint"
    record.test = []
    add_results(record, [type("Result", (), {"to_dict": lambda self: {"dataset": "a", "metrics": {}}})()])
    assert TrialRecord.read(tmp_path / "results.json").test == [{"dataset": "a", "metrics": {}}]


def test_stage_twos_result_is_rebuilt_from_its_files(tmp_path):
    config = hand_study(tmp_path)
    proxy = analyze_proxy(config, study(seeds=2))
    assert rebuild(config, proxy) is None                                         # stage 2 never started
    entries = promotions(proxy.groups, "min", promote=1, controls=1, seed=0)
    layout = config.layout
    layout.promotions_file.parent.mkdir(parents=True)
    layout.promotions_file.write_text(json.dumps({"settings": {}, "entries": [e.to_dict() for e in entries]}))
    for r in study(seeds=2, seed=1):
        r.file = str(layout.finetune.runs / r.trial_id / "results.json")
        (layout.finetune.runs / r.trial_id).mkdir(parents=True)
        r.write()
    result = rebuild(config, proxy)
    assert [row.role for row in result.configurations] == [e.role for e in entries]
    assert result.seeds == 2 and len(result.records) == 8 and result.summary.per_base_model


def test_the_test_phase_tests_the_baseline_that_validation_prefers_among_the_tuned_ones():
    import pytest

    from sbmoe_ray.analysis.records import baselines
    from sbmoe_ray.stages.test_phase import tested_groups

    records = study(seeds=2)
    for lr, loss in ((6e-6, 0.7), (6e-5, 1.3)):          # two more baselines, their own encoder learning rates
        records += [TrialRecord(f"b{lr}-s{s}", {"base_model": "m", "num_experts": 0, "encoder_lr": lr}, "val_loss",
                                {"val_loss": loss + 0.01 * s}, [], [], "cached_head", s) for s in range(2)]
    (_, baseline), = chosen_groups(records, "min").values()
    assert baseline.params.get("encoder_lr") == 6e-6                               # the lowest mean val_loss
    assert sum(g.is_baseline for g in tested_groups(records, "min")) == 1          # only it is tested
    with pytest.raises(ValueError, match="several baselines"):
        baselines(group_trials(records))


def test_the_power_plan_before_stage_two_reads_stage_ones_claim_at_the_seeds_stage_two_will_test(tmp_path):
    config = hand_study(tmp_path, confirm_seeds=5)
    proxy = analyze_proxy(config, study(seeds=3))
    entries = promotions(proxy.groups, "min", promote=1, controls=1, seed=0)
    config.layout.promotions_file.parent.mkdir(parents=True)
    config.layout.promotions_file.write_text(json.dumps({"settings": {}, "entries": [e.to_dict() for e in entries]}))
    setup = setup_from_disk(config, proxy)
    plan, = setup.power_plans
    assert plan.seeds == 5 and plan.collections == ["a", "b"] and plan.mde > 0 and plan.pooling == "random"
    fewer, = setup_from_disk(hand_study(tmp_path, confirm_seeds=2), proxy).power_plans
    assert fewer.mde > plan.mde
    assert power_plan_lines(setup)[0].startswith("power plan (pilot: stage 1's claim")


def test_after_the_selection_the_measured_plan_readmits_the_controls_once_and_a_resume_reads_it_back(tmp_path):
    import time
    from dataclasses import replace

    from sbmoe_ray.stages.confirm_plan import confirmation_plan, with_admitted
    from sbmoe_ray.study.points import Promotion

    config = hand_study(tmp_path, confirm_seeds=2, attribution=["dense_adapter", "random_routing"])
    entries = [Promotion("m", "promoted", {"num_experts": 3}, "p1"), Promotion("m", "baseline", {}),
               Promotion("m", "dense adapter", {}), Promotion("m", "random routing", {})]
    costs = {"m": ModelCosts(1.0, 1.0, 1.0, trial_s=600.0, test_s=10.0, eval_threads=2)}
    plan = make_plan(entries, 1, costs, budget_s=2 * 600.0 + 2 * 2 * 610.0 + 100.0, spent_s=0.0, cores=2, confirm=2)
    assert {e.role for e in plan.dropped} == {"dense adapter", "random routing"}     # at 600 s a trial: no room
    records = [replace(r, params={**r.params, "base_model": "m"}, seconds={"start": 10.0 * i, "end": 10.0 * i + 9})
               for i, r in enumerate(study(seeds=1)[:2])]                          # 2 trials from 0 s to 19 s
    again = confirmation_plan(config, plan, records, time.monotonic())
    assert [e.role for e in again.admitted] == ["dense adapter", "random routing"]
    assert again.trial_s == {"m": 9.5} and config.layout.confirm_plan_file.is_file()     # the span, 19 s / 2
    assert [e.role for e in with_admitted(plan.kept, again)][-2:] == ["dense adapter", "random routing"]
    slower = [replace(r, seconds={"start": 0.0, "end": 5000.0}) for r in records]
    read_back = confirmation_plan(config, plan, slower, time.monotonic())          # made once: a resume reads it
    assert json.dumps(read_back.to_dict()) == json.dumps(again.to_dict())


def test_a_stage_killed_before_its_first_state_snapshot_gets_a_new_tuner_not_a_restore(tmp_path):
    """Tune writes ``tuner.pkl`` when a Tuner is made, its experiment state only once trials run: restoring the
    former alone logs an ERROR traceback to the user's terminal and starts afresh anyway."""
    from ray import tune

    from sbmoe_ray.stages.grid import restorable

    tune.Tuner(lambda config: None, run_config=tune.RunConfig(name="tune", storage_path=str(tmp_path)))
    assert tune.Tuner.can_restore(str(tmp_path / "tune")) and not restorable(tmp_path / "tune")
    (tmp_path / "tune" / "experiment_state-2026-12-06_23-49-35.json").write_text("{}")
    assert restorable(tmp_path / "tune")
