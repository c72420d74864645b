"""A tiny two-stage study whose budget forces the plan, run twice: the plan is said up front, made once and
kept; only what it kept is fine-tuned; ``sbmoe report`` rebuilds its section."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sbmoe_ray.analysis.records import group_key, load_trials
from sbmoe_ray.study.layout import StudyLayout

from helpers import finish, sweep, write_study
from test_study import assets  # noqa: F401 (the module fixture)

pytestmark = [pytest.mark.slow]


def test_a_study_over_its_budget_fine_tunes_the_planned_configurations_only_and_keeps_the_plan(tmp_path, assets):
    config = write_study(tmp_path, assets, **{
        "promote": 2, "proxy.num_trials": 5, "proxy.max_concurrent": 1, "space.num_experts": [0, 2, 3],
        "budget_minutes": 0.01,        # far too little: the plan keeps the baseline and the top configuration
        # 1 Ray Train worker a fine-tuning: the plan is under test here, 2 workers in test_two_stage.py
        "finetune": {"controls": 1, "seeds": 2, "encoder_lr": 1e-4, "epochs": 1, "num_workers": 1,
                     "cpus_per_worker": 0.5, "validation_retrieval_docs": 20}})
    proc = sweep(config)
    output = finish(proc, 900)
    assert proc.returncode == 0, output[-4000:]
    stage2_dir = tmp_path / "studies" / "tiny-study" / "finetune"
    plan = json.loads((stage2_dir / "plan.json").read_text())
    promoted = json.loads((stage2_dir / "promoted.json").read_text())["entries"]
    # 2 promoted, the 1 control drawn from the space unless it ranks among the top 2 (then it is promoted and
    # nothing replaces it), the baseline, and the top configuration's attribution controls
    roles = [e["role"] for e in promoted]
    assert roles.count("promoted") == 2 and roles.count("control") <= 1
    assert roles[-3:] == ["baseline", "dense adapter", "random routing"]      # the attribution controls, dropped
    assert plan["seeds"] == 1
    assert [e["role"] for e in plan["kept"]] == ["promoted", "baseline"]
    assert plan["kept"][0]["stage1_group"] == promoted[0]["stage1_group"]
    model = plan["kept"][0]["base_model"]
    assert plan["costs"][model]["step_s"] > 0 and plan["costs"][model]["tokens_per_s"] > 0
    assert plan["estimate_s"]["total"] > plan["budget_s"]                       # and it says so
    assert "[plan] budget 0 min" in output and "over the budget even so" in output
    assert output.index("[plan] before stage 1") < output.index("[proxy]")          # said up front
    assert "budget_minutes=0.01 cannot be met on this machine" in output
    stage2 = load_trials(StudyLayout(stage2_dir.parent).finetune)
    assert sorted(r.group for r in stage2) == sorted(group_key(e["params"]) for e in plan["kept"])
    report = (tmp_path / "studies" / "tiny-study" / "report" / "report.md").read_text()
    assert "dropped to fit" in report

    # Run again: the plan is read back, nothing is re-planned or re-trained.
    mtime = (stage2_dir / "plan.json").stat().st_mtime
    proc = sweep(config)
    output = finish(proc, 900)
    assert proc.returncode == 0, output[-4000:]
    assert "[plan] before stage 1" not in output                                       # planned already
    assert (stage2_dir / "plan.json").stat().st_mtime == mtime
    assert len(load_trials(StudyLayout(stage2_dir.parent).finetune)) == len(stage2)
    # `sbmoe report` rewrites the report from the files: the plan's section again.
    done = subprocess.run([sys.executable, "-m", "sbmoe_ray.cli", "report", str(stage2_dir.parent)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dropped to fit" in (stage2_dir.parent / "report" / "report.md").read_text()
