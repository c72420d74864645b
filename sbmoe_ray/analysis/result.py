"""What a stage found, computed once: its trials, their configurations, every comparison with the baseline,
and the answer. The report renders it (:mod:`sbmoe_ray.analysis.report`), the MLflow tracker logs it
(:mod:`sbmoe_ray.tracking`), the next stage reads it (stage 2 promotes from stage 1's groups).

Stage 1 (the proxy) compares every SB-MoE configuration it tried with its base model's baseline; stage 2
(fine-tuning) only the configurations it tested (its choice and the baseline, per base model), on the test
sets and the large collections, and checks the proxy's ranking over the promoted and control
configurations (:mod:`sbmoe_ray.analysis.agreement`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sbmoe_ray.analysis.agreement import ProxyCheck, proxy_check
from sbmoe_ray.analysis.answer import claimed_keys, study_summary
from sbmoe_ray.analysis.attribution import attribution_comparisons, attribution_summary
from sbmoe_ray.analysis.comparisons import Comparison, compare_groups
from sbmoe_ray.analysis.pareto import pareto_summary
from sbmoe_ray.analysis.primary import primary_claims
from sbmoe_ray.analysis.records import ConfigGroup, TrialRecord, group_key, group_trials, nan_mean
from sbmoe_ray.analysis.summary import ConfigurationRow, StageSummary
from sbmoe_ray.analysis.test_sets import describe_test_sets
from sbmoe_ray.study.config import StudyConfig
from sbmoe_ray.study.points import Promotion, seeds_used
from sbmoe_ray.study.space import label


@dataclass
class StageResult:
    name: str                              # proxy or finetune
    records: list[TrialRecord]
    groups: list[ConfigGroup]
    comparisons: list[Comparison]
    summary: StageSummary                  # the answer per base model (answer.study_summary)
    failed: int = 0                        # trials that failed (the stage is then run again to retry them)


@dataclass
class FinetuneResult(StageResult):
    configurations: list[ConfigurationRow] = field(default_factory=list)  # promoted, control, baseline rows
    agreement: dict[str, ProxyCheck] = field(default_factory=dict)        # per base model: τ, ρ, verdict
    seconds: dict[str, float] = field(default_factory=dict)              # where the study's time went
    seeds: int = 1
    seeds_why: str = ""
    plan: dict[str, Any] | None = None     # the budget's plan (stages.budget.BudgetPlan), if any
    plan_text: str | None = None           # ... in one sentence
    confirmed: list[TrialRecord] = field(default_factory=list)   # the fresh-seed replicates (tested), if any
    training_seeds: dict[str, list[int]] = field(default_factory=dict)   # selection and confirmation seeds

    def summary_entry(self) -> dict[str, Any]:
        """Stage 2 in ``summary.json``."""
        return {"configurations": [r.to_dict() for r in self.configurations],
                "agreement": {m: a.to_dict() for m, a in self.agreement.items()}, "seconds": self.seconds,
                "plan": self.plan, "seeds": self.seeds, "training_seeds": self.training_seeds,
                "test": self.summary.to_dict()}


def analyze_proxy(study: StudyConfig, records: list[TrialRecord], failed: int = 0) -> StageResult:
    """Stage 1: every configuration against its baseline on the test sets, the configuration chosen by the
    mean validation objective, and (with a zero-shot validation set) the Pareto front."""
    groups, datasets, mode = group_trials(records), study.test_names, study.proxy_stage().mode
    comparisons = compare_groups(groups, datasets, claimed_keys(groups, mode), study.analysis)
    summary = study_summary(groups, comparisons, datasets, mode, study.proxy.objective, study.budget(),
                            study.analysis)
    summary.test_sets = describe_test_sets(study.train.data)
    summary.primary = primary_claims(
        groups, mode, study.analysis, study.primary_test_sets,
        "the SB-MoE head validation chose, on the frozen encoder (stage 1), against the encoder alone")
    if study.train.data.zero_shot_validation:
        summary.pareto = pareto_summary(groups, mode, datasets)
    return StageResult("proxy", records, groups, comparisons, summary, failed)


def analyze_finetune(study: StudyConfig, records: list[TrialRecord], promotions: list[Promotion], seeds: int,
                     seeds_why: str, seconds: dict[str, float], plan: dict | None = None,
                     plan_text: str | None = None, confirmed: list[TrialRecord] | None = None) -> FinetuneResult:
    """Stage 2: the tested configurations (the confirmation's fresh replicates where it ran) against plain
    fine-tuning on every final test set, and the proxy check over the promoted and control configurations
    (on the selection replicates)."""
    groups, ft = group_trials(records), study.finetune
    tested, mode = [g for g in group_trials(confirmed or records) if g.tested], study.finetune_stage().mode
    comparisons = compare_groups(tested, study.final_test_names, claimed_keys(tested, mode), study.analysis)
    ran = [r.history[-1].get("steps_done", 0) for r in [*records, *(confirmed or [])] if r.history]
    per_epoch = max((r.history[0].get("steps_done", 0) for r in records if r.history), default=0)
    budget = {"configurations_planned": len(promotions), "seeds": seeds, "epochs": ft.epochs,
              "workers": ft.num_workers, "encoder_lr": ft.lr_grid[0],
              "encoder_lr_grid": {role: sorted({p.params.get("encoder_lr", ft.lr_grid[0]) for p in promotions
                                                if p.role == role}) for role in ("promoted", "baseline")},
              "baseline_encoder_lrs": sorted({p.params.get("encoder_lr", ft.lr_grid[0]) for p in promotions
                                              if p.role == "baseline"}),
              "steps_cap": ft.epochs * per_epoch,
              "steps_run": {"min": min(ran, default=0), "max": max(ran, default=0)}}
    summary = study_summary(tested, comparisons, study.final_test_names, mode, ft.objective, budget, study.analysis)
    summary.primary = primary_claims(
        tested, mode, study.analysis, study.primary_test_sets,
        f"fine-tuned SB-MoE, the configuration validation chose, against plain fine-tuning ({study.depth_label()})")
    summary.attribution = attribution_summary(summary.per_base_model, attribution_comparisons(
        tested, study.final_test_names, mode, study.analysis), tested, study.final_test_names)
    rows = configuration_rows(promotions, {g.key: g for g in groups})
    used = seeds_used(study.train.run.seed, seeds, len({r.seed for r in confirmed or []}))
    if confirmed:
        used = {**used, "train_fraction": ft.confirm_train_fraction}
    summary.training_seeds = used
    return FinetuneResult("finetune", records, groups, comparisons, summary, 0, rows,
                          agreements(rows, mode, study.analysis.alpha), seconds, seeds, seeds_why, plan, plan_text,
                          confirmed or [], used)


def configuration_rows(promotions: list[Promotion], groups: dict[str, ConfigGroup]) -> list[ConfigurationRow]:
    """One row per promoted, control and baseline configuration, with both stages' objectives."""
    rows = []
    for entry in promotions:
        group = groups.get(group_key(entry.params))
        records = group.records if group else []
        rows.append(ConfigurationRow(
            entry.base_model, entry.role, label(entry.params), group_key(entry.params), entry.stage1_objective,
            group.objective if group else math.nan,
            nan_mean(r.best_metrics.get("val_ndcg@10", math.nan) for r in records), len(records)))
    return rows


def agreements(rows: list[ConfigurationRow], mode: str, alpha: float = 0.05) -> dict[str, ProxyCheck]:
    """Per base model: τ and ρ between the stages over its promoted and control configurations, and how
    good the proxy's promotion was as a decision (top-k recall, regret)."""
    out = {}
    for base_model in sorted({r.base_model for r in rows}):
        mine = [r for r in rows if r.base_model == base_model and r.role != "baseline"
                and not math.isnan(r.stage1_objective) and not math.isnan(r.stage2_objective)]
        out[base_model] = proxy_check(mine, sum(r.role == "promoted" for r in mine), mode, base_model, alpha)
    return out


def stage_seconds(records: list[TrialRecord]) -> float:
    """Wall time of a stage: its first trial's start to its last trial's end (from the records)."""
    spans = [r.seconds for r in records if "start" in r.seconds and "end" in r.seconds]
    return max(s["end"] for s in spans) - min(s["start"] for s in spans) if spans else math.nan


def study_times(proxy: list[TrialRecord], finetune: list[TrialRecord],
                confirmed: list[TrialRecord] = ()) -> dict[str, float]:
    """Where a two-stage study's time went: each stage's trials (first start to last end), the confirmation's,
    and the test phase (the sum of its evaluations' own time: encoding, search, scoring; not its wall time
    when evaluations run side by side)."""
    times = {"stage 1": stage_seconds(proxy), "stage 2 training": stage_seconds(finetune)}
    if confirmed:
        times["confirmation training"] = stage_seconds(confirmed)
    times["test evaluations (summed; several run at once where resources allow)"] = sum(
        t.get("seconds", {}).get("total", 0.0) for r in [*finetune, *confirmed] for t in r.test)
    return times
