"""A tiny two-stage study whose budget cannot hold even the least stage 2, run twice: the plan is said up
front, made once and kept; stage 2 is not run (breadth is traded, never depth), the answer is stage 1's and the
report says what budget would run it; ``sbmoe report`` rebuilds that section. What a plan drops, in order, is
tested on the plan itself (``test_budget.py``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sbmoe_ray.analysis.records import load_trials
from sbmoe_ray.study.layout import StudyLayout

from helpers import finish, sweep, write_study
from test_study import assets  # noqa: F401 (the module fixture)

pytestmark = [pytest.mark.slow]


def test_a_study_whose_budget_cannot_hold_stage_2_runs_stage_1_only_and_says_what_would_run_it(tmp_path, assets):
    config = write_study(tmp_path, assets, **{
        "promote": 2, "proxy.num_trials": 5, "proxy.max_concurrent": 1, "space.num_experts": [0, 2, 3],
        "budget_minutes": 0.01,        # far too little for any fine-tuning
        "finetune": {"controls": 1, "seeds": 2, "encoder_lr": 1e-4, "epochs": 1, "num_workers": 1,
                     "cpus_per_worker": 0.5, "validation_retrieval_docs": 20}})
    proc = sweep(config)
    output = finish(proc, 900)
    assert proc.returncode == 0, output[-4000:]
    study_dir = tmp_path / "studies" / "tiny-study"
    plan = json.loads((study_dir / "finetune" / "plan.json").read_text())
    promoted = json.loads((study_dir / "finetune" / "promoted.json").read_text())["entries"]
    assert plan["kept"] == [] and len(plan["dropped"]) == len(promoted)
    model = plan["dropped"][0]["base_model"]
    assert plan["costs"][model]["step_s"] > 0 and plan["costs"][model]["tokens_per_s"] > 0
    assert plan["estimate_s"]["total"] > plan["budget_s"]
    assert output.index("[plan] before stage 1") < output.index("[proxy]")          # said up front
    assert "budget_minutes=0.01 cannot hold stage 2 on this machine" in output
    assert "stage 2 is not run and the answer is stage 1's" in output and "--set budget_minutes=" in output
    assert load_trials(StudyLayout(study_dir).finetune) == []                          # nothing fine-tuned
    report = (study_dir / "report" / "report.md").read_text()
    assert "## Stage 2: not run" in report and "--set budget_minutes=" in report
    summary = json.loads((study_dir / "report" / "summary.json").read_text())
    assert summary["finetune"]["not_run"]["plan"]["kept"] == []
    assert (study_dir / "models").is_dir()                              # stage 1's answer, exported

    # Run again: complete, nothing re-planned or re-trained.
    mtime = (study_dir / "finetune" / "plan.json").stat().st_mtime
    proc = sweep(config)
    output = finish(proc, 900)
    assert proc.returncode == 0 and "is complete" in output, output[-4000:]
    assert (study_dir / "finetune" / "plan.json").stat().st_mtime == mtime
    # `sbmoe report` rewrites the report from the files: the section again.
    (study_dir / "report" / "report.md").unlink()
    done = subprocess.run([sys.executable, "-m", "sbmoe_ray.cli", "report", str(study_dir)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "## Stage 2: not run" in (study_dir / "report" / "report.md").read_text()
