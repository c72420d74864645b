"""Stage 2 planned to a time budget: what is dropped first, what always runs, and a tiny two-stage study
whose budget forces the plan, run twice (the plan is made once and kept)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from sbmoe_ray.analysis.records import group_key, load_trials
from sbmoe_ray.stages.budget import ModelCosts, make_plan, priority

from test_study import assets, sweep, write_study  # noqa: F401 (the module fixture)


def entries(models=("a", "b"), promoted=2, controls=2) -> list[dict]:
    out = []
    for m in models:
        out += [{"base_model": m, "role": "promoted", "stage1_group": f"{m}p{i}"} for i in range(1, promoted + 1)]
        out += [{"base_model": m, "role": "control", "stage1_group": f"{m}c{i}"} for i in range(1, controls + 1)]
        out.append({"base_model": m, "role": "baseline", "stage1_group": None})
    return out


def costs(trial_s=60.0, test_s=120.0) -> dict[str, ModelCosts]:
    return {m: ModelCosts(1.0, 1000.0, 2000.0, trial_s, test_s) for m in ("a", "b")}


def test_the_drop_order_alternates_base_models_and_reads_promoted_and_controls_interleaved_from_the_end():
    order = [e["stage1_group"] for e in priority(entries())]
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
    assert plan.seeds == 1 and plan.dropped[0] == {"role": "seeds", "seeds": 2}
    assert [e["stage1_group"] for e in plan.dropped[1:]] == ["ac2"]          # 940 - 60 = 880 <= 900
    assert plan.estimate_s["total"] <= 900 and "dropped to fit" in plan.describe()


def test_the_baseline_and_the_top_configuration_run_even_over_budget():
    plan = make_plan(entries(), 1, costs(), budget_s=1, spent_s=100, cores=2)
    kept = {(e["base_model"], e["role"], e["stage1_group"]) for e in plan.kept}
    assert kept == {("a", "promoted", "ap1"), ("a", "baseline", None), ("b", "promoted", "bp1"), ("b", "baseline", None)}
    assert plan.estimate_s["total"] > plan.budget_s and "over the budget even so" in plan.describe()
    assert not math.isnan(plan.estimate_s["total"])


def test_a_study_over_its_budget_fine_tunes_the_planned_configurations_only_and_keeps_the_plan(tmp_path, assets):
    config = write_study(tmp_path, assets, **{
        "promote": 2, "search.num_trials": 5, "search.max_concurrent": 1, "space.num_experts": [0, 2, 3],
        "budget_minutes": 0.01,        # far too little: the plan keeps the baseline and the top configuration
        "finetune": {"controls": 1, "seeds": 2, "encoder_lr": 1e-4, "epochs": 1, "num_workers": 2,
                     "cpus_per_worker": 0.5, "validation_retrieval_docs": 20}})
    proc = sweep(config)
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output[-4000:]
    stage2_dir = tmp_path / "studies" / "tiny-study" / "finetune"
    plan = json.loads((stage2_dir / "plan.json").read_text())
    promoted = json.loads((stage2_dir / "promoted.json").read_text())["entries"]
    assert len(promoted) == 4 and plan["seeds"] == 1
    assert [e["role"] for e in plan["kept"]] == ["promoted", "baseline"]
    assert plan["kept"][0]["stage1_group"] == promoted[0]["stage1_group"]
    model = plan["kept"][0]["base_model"]
    assert plan["costs"][model]["step_s"] > 0 and plan["costs"][model]["tokens_per_s"] > 0
    assert plan["estimate_s"]["total"] > plan["budget_s"]                       # and it says so
    assert "[plan] budget 0 min" in output and "over the budget even so" in output
    assert output.index("[plan] before stage 1") < output.index("[stage 1]")          # said up front
    assert "budget_minutes=0.01 cannot be met on this machine" in output
    stage2 = load_trials(stage2_dir)
    assert sorted(r.group for r in stage2) == sorted(group_key(e["params"]) for e in plan["kept"])
    report = (tmp_path / "studies" / "tiny-study" / "report" / "report.md").read_text()
    assert "dropped to fit" in report

    # Run again: the plan is read back, nothing is re-planned or re-trained.
    mtime = (stage2_dir / "plan.json").stat().st_mtime
    proc = sweep(config)
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output[-4000:]
    assert "[plan] before stage 1" not in output                                       # planned already
    assert (stage2_dir / "plan.json").stat().st_mtime == mtime
    assert len(load_trials(stage2_dir)) == len(stage2)
    # `sbmoe report` rewrites the report from the files: the plan's section again.
    done = subprocess.run([sys.executable, "-m", "sbmoe_ray.cli", "report", str(stage2_dir.parent)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dropped to fit" in (stage2_dir.parent / "report" / "report.md").read_text()
