"""What stage 2 fine-tunes: the top of stage 1 by its mean objective, seeded controls from the rest, the baseline."""

from __future__ import annotations

import json

import pytest

from sbmoe_ray.analysis.records import group_trials
from sbmoe_ray.errors import ConfigError
from sbmoe_ray.stages.promotion import load_or_promote, promotions

from helpers import proxy_trials


def test_stage_two_promotes_the_top_of_stage_one_plus_seeded_controls_and_the_baseline():
    groups = group_trials(proxy_trials())
    entries = promotions(groups, "min", promote=2, controls=2, seed=0)
    ranked = sorted((g for g in groups if not g.is_baseline), key=lambda g: g.objective)
    assert [e.stage1_group for e in entries if e.role == "promoted"] == [g.key for g in ranked[:2]]
    controls = {e.stage1_group for e in entries if e.role == "control"}
    assert len(controls) == 2 and controls <= {g.key for g in ranked[2:]}
    assert [e.role for e in entries].count("baseline") == 1
    assert entries == promotions(groups, "min", promote=2, controls=2, seed=0)           # deterministic
    assert entries != promotions(groups, "min", promote=2, controls=2, seed=1)           # the seed draws the controls


def test_promotions_are_written_once_and_read_back_as_they_were(tmp_path):
    groups = group_trials(proxy_trials())
    settings = {"promote": 2, "controls": 1, "seed": 0, "seeds": 2}
    path = tmp_path / "promoted.json"
    first = load_or_promote(path, settings, lambda: promotions(groups, "min", 2, 1, 0))
    again = load_or_promote(path, settings, lambda: [])
    assert json.dumps([e.to_dict() for e in again]) == json.dumps([e.to_dict() for e in first]) and len(first) == 4
    with pytest.raises(ConfigError, match=r"stage 2 of this study was started with controls=1"):
        load_or_promote(path, {**settings, "controls": 2}, lambda: [])


def test_controls_are_drawn_from_the_space_and_enqueued_in_stage_one_before_tpe_searches():
    from sbmoe_ray.stages.proxy import baselines, controls
    from sbmoe_ray.study.config import StudyConfig
    from sbmoe_ray.study.space import define_space

    study = StudyConfig.from_dict({"name": "c", "promote": 1, "finetune": {"controls": 3}})
    points = controls(study)
    assert len(points) == 3 * len(study.space["base_model"]) and points == controls(study)     # seeded
    assert all(p["num_experts"] > 0 and study.space["moe_lr"][0] <= p["moe_lr"] <= study.space["moe_lr"][1]
               for p in points)
    assert controls(StudyConfig.from_dict({"name": "c", "promote": 0})) == []                    # no stage 2
    # Each point is a valid Optuna configuration of the space (what points_to_evaluate enqueues).
    import optuna

    for point in baselines(study) + points:
        trial = optuna.trial.FixedTrial(point)
        define_space(trial, study.space)
        assert trial.params == point


def test_stage_two_takes_its_controls_from_the_drawn_points_not_from_the_search():
    groups = group_trials(proxy_trials(n=8, seeds=1))
    drawn = [g for g in groups if not g.is_baseline][5:7]
    points = [{"baseline": 0, **g.params} for g in drawn]
    entries = promotions(groups, "min", promote=2, controls=2, seed=0, points=points)
    chosen = {e.stage1_group for e in entries if e.role == "control"}
    top = {e.stage1_group for e in entries if e.role == "promoted"}
    assert chosen == {g.key for g in drawn} - top and len(top) == 2


def test_plain_fine_tuning_is_tuned_over_as_many_encoder_learning_rates_as_sb_moe_has_candidates():
    from sbmoe_ray.study.stage import FinetuneConfig

    ft = FinetuneConfig(encoder_lr=2e-5)
    assert ft.baseline_lrs(6) == [2e-5, 6.32e-5, 6.32e-6, 2e-4, 2e-6, 6.32e-4]    # the stage's own first
    assert FinetuneConfig(encoder_lr=2e-5, baseline_configs=1).baseline_lrs(6) == [2e-5]
    groups = group_trials(proxy_trials())
    entries = promotions(groups, "min", promote=2, controls=1, seed=0, baseline_lrs=ft.baseline_lrs(3))
    plain = [e.params for e in entries if e.role == "baseline"]
    assert [p["encoder_lr"] for p in plain] == [2e-5, 6.32e-5, 6.32e-6]
    assert sum(e.role in ("promoted", "control") for e in entries) == len(plain)    # tuned as much as SB-MoE
    one = promotions(groups, "min", promote=2, controls=1, seed=0, baseline_lrs=[2e-5])
    assert [e.params for e in one if e.role == "baseline"] == [{"base_model": "m", "num_experts": 0}]


def test_every_arm_gets_the_same_encoder_lr_grid_and_plain_fine_tuning_as_many_candidates():
    from sbmoe_ray.study.stage import FinetuneConfig

    ft = FinetuneConfig(encoder_lrs=[2e-5, 2e-4], controls=1)
    candidates = ft.sbmoe_candidates(promote=2)
    lrs = ft.baseline_lrs(candidates)
    assert candidates == 5 and lrs[:2] == [2e-5, 2e-4] and lrs[2] == 6.32e-5 and len(set(lrs)) == 5
    entries = promotions(group_trials(proxy_trials()), "min", promote=2, controls=1, seed=0, baseline_lrs=lrs,
                         encoder_lrs=ft.lr_grid)
    promoted = [e.params["encoder_lr"] for e in entries if e.role == "promoted"]
    assert promoted == [2e-5, 2e-4, 2e-5, 2e-4]                                   # each head at every rate
    assert all("encoder_lr" not in e.params for e in entries if e.role == "control")   # the stage's own: 2e-5
    assert sum(e.role in ("promoted", "control") for e in entries) == sum(e.role == "baseline" for e in entries)


def test_the_attribution_controls_are_built_from_the_configuration_stage_two_chose():
    from sbmoe_ray.stages.promotion import controls_of

    groups = group_trials(proxy_trials())
    entries = promotions(groups, "min", promote=2, controls=1, seed=0, arms=["dense_adapter", "random_routing"])
    top = next(e for e in entries if e.role == "promoted")
    other = next(g for g in groups if not g.is_baseline and g.key != top.stage1_group)   # stage 2 chose another
    chosen = type(other)({**other.params, "encoder_lr": 2e-4}, other.records)
    built = controls_of(entries, {"m": chosen})
    assert [e.role for e in built] == ["dense adapter", "random routing"]
    assert all(e.stage1_group == chosen.key and e.params["encoder_lr"] == 2e-4 for e in built)
    adapter, routing = built
    assert adapter.params["num_experts"] == 1 and adapter.params["moe_lr"] == other.params["moe_lr"]
    assert {k: v for k, v in routing.params.items() if k != "arm"} == chosen.params


def test_a_tuned_baseline_trains_at_its_own_encoder_learning_rate_and_says_so_in_its_label():
    from sbmoe_ray.study.space import apply, label
    from sbmoe_ray.train.config import TrainConfig

    params = {"base_model": "minilm", "num_experts": 0, "encoder_lr": 6.32e-6}
    assert apply(TrainConfig(), params).optim.encoder_lr == 6.32e-6
    assert label(params) == "minilm baseline enc-lr=6.3e-6"
    assert apply(TrainConfig(), {"base_model": "minilm", "num_experts": 0}).optim.encoder_lr == TrainConfig().optim.encoder_lr


def test_a_resumed_study_keeps_its_promotions_when_a_setting_was_added_since_they_were_written(tmp_path):
    groups = group_trials(proxy_trials())
    path = tmp_path / "promoted.json"
    first = load_or_promote(path, {"promote": 2}, lambda: promotions(groups, "min", 2, 1, 0))
    again = load_or_promote(path, {"promote": 2, "baseline_lrs": [1e-5, 3e-6]}, lambda: [])
    assert json.dumps([e.to_dict() for e in again]) == json.dumps([e.to_dict() for e in first])
