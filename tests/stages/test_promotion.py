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
