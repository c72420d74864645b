"""A stage's summary is a typed record that summary.json holds whole and gives back."""

from __future__ import annotations

import json

from test_report import hand_study

from sbmoe_ray.analysis.result import analyze_proxy
from sbmoe_ray.analysis.summary import StageSummary

from helpers import study


def test_a_summary_read_back_from_its_json_writes_the_same_json_and_answers_alike(tmp_path):
    summary = analyze_proxy(hand_study(tmp_path), study(seeds=3)).summary
    written = json.dumps(summary.to_dict(), default=str, sort_keys=True)
    back = StageSummary.from_dict(json.loads(written))
    assert json.dumps(back.to_dict(), default=str, sort_keys=True) == written
    (answer,) = back.per_base_model
    assert answer.chosen.config == summary.per_base_model[0].chosen.config and answer.chosen.seeds == [0, 1, 2]
    assert answer.datasets["a"].delta == summary.per_base_model[0].datasets["a"].delta
    assert back.claim("m").delta == summary.primary[0].delta and back.claimed() == {"m": {"a", "b"}}
    assert json.loads(written)["per_base_model"][0]["chosen"]["val_loss"] == answer.chosen.objective


def test_a_summary_written_by_an_older_version_with_unknown_keys_still_reads():
    old = {"objective": "val_loss", "per_base_model": [
        {"base_model": "m", "chosen": {"group": "g", "config": "c", "params": {}, "seeds": [0], "trial_ids": ["t"],
                                       "val_loss": 0.5}, "retired_key": 1}],
        "primary": [], "a_key_no_longer_written": True}
    summary = StageSummary.from_dict(old)
    assert summary.answer("m").chosen.objective == 0.5 and summary.claim("m") is None
