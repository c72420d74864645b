"""A gain is credited to the experts only when it also beats the dense adapter: the chosen configuration
against its controls, per test set, with the same inference as against the baseline."""

from __future__ import annotations

import random
from dataclasses import replace

from sbmoe_ray.analysis.agreement import ProxyCheck, rank_agreement
from sbmoe_ray.analysis.attribution import attribution_comparisons, attribution_lines, attribution_summary, credit
from sbmoe_ray.analysis.records import ConfigGroup, TrialRecord
from sbmoe_ray.analysis.summary import Answer, Chosen, StageSummary
from sbmoe_ray.study.claims import ClaimsConfig


def test_credit_needs_a_gain_over_the_baseline_and_over_the_dense_adapter():
    assert credit("better", "better").startswith("a gain of the experts")
    assert credit("better", "inconclusive (detectable: ±0.030)").startswith("a gain of a trained head, not shown")
    assert "no dense-adapter control was tested" in credit("better", None)
    assert credit("worse", "better") == "no gain over plain fine-tuning to attribute"


def group(params: dict, shift: float, seeds=(0, 1, 2), objective: float = 1.0) -> ConfigGroup:
    records = []
    for seed in seeds:
        rng = random.Random(f"{params}-{seed}")
        per_query = {f"q{i}": min(1.0, max(0.0, 0.5 + shift + rng.gauss(0, 0.05))) for i in range(60)}
        test = [{"dataset": "d", "per_query": {"ndcg@10": per_query}, "metrics": {"ndcg@10": 0.5 + shift}}]
        records.append(TrialRecord(f"{params}-{seed}", params, "val_loss", {"val_loss": objective}, test, [],
                                   "live", seed))
    return ConfigGroup(params, records)


def test_the_chosen_configuration_is_compared_with_each_control_and_never_chosen_from_them():
    moe = {"base_model": "m", "num_experts": 3, "top_k": 1}
    groups = [group(moe, 0.10, objective=1.0), group({"base_model": "m", "num_experts": 0}, 0.0, objective=1.2),
              group({**moe, "num_experts": 1, "arm": "dense_adapter"}, 0.09, objective=0.5),    # best val: not chosen
              group({**moe, "arm": "random_routing"}, 0.0, objective=0.9)]
    rows = attribution_comparisons(groups, ["d"], "min", ClaimsConfig())
    by_arm = {r.against: r for r in rows}
    assert set(by_arm) == {"dense_adapter", "random_routing"} and all(r.family == "attribution" for r in rows)
    assert by_arm["random_routing"].delta > 0.05 and by_arm["random_routing"].verdict == "better"
    assert abs(by_arm["dense_adapter"].delta) < 0.05 and by_arm["dense_adapter"].verdict != "better"
    chosen = Chosen("g", "m N=3 k=1", moe, [0, 1, 2], [], 1.0, "val_loss")
    answers = [Answer("m", 4, "sb-moe", False, 1.2, chosen, {"d": replace(rows[0], verdict="better")})]
    summary = attribution_summary(answers, rows)
    assert summary["m"]["credit"]["d"].startswith("a gain of a trained head, not shown to be the experts'")
    text = "\n".join(attribution_lines(summary))
    assert "| m | d | dense adapter |" in text and "random routing" in text


def check(configurations: int) -> ProxyCheck:
    """A proxy check over ``configurations`` configurations ranked alike by both stages."""
    return ProxyCheck(**rank_agreement(list(range(configurations)), list(range(configurations))))


def test_the_report_says_which_claims_the_remaining_evidence_cannot_settle_and_what_would():
    from sbmoe_ray.analysis.evidence import evidence_lines

    answers = [{"base_model": "m", "chosen": {"group": "g", "config": "c", "params": {}, "seeds": [0],
                                              "trial_ids": []}}]
    summary = StageSummary.from_dict({
        "per_base_model": answers,
        "attribution": {"m": {"credit": {"d": "a gain of the SB-MoE head, not attributed: no dense-adapter "
                                              "control was tested (dropped by the budget)"}}}})
    plan = {"costs": {"m": {"trial_s": 600.0}}}
    text = "\n".join(evidence_lines(summary, {"m": check(3)}, plan, {"selection": [0], "confirmation": []}))
    assert "no interval over seeds (1 seed(s) per arm, 3 needed)" in text and "~40 min more" in text
    assert "proxy check not settled (3 configurations" in text and "without the dense adapter" in text
    settled = evidence_lines(StageSummary.from_dict({"per_base_model": answers}), {"m": check(6)}, plan,
                             {"selection": [0], "confirmation": [1000, 1001, 1002]})
    assert settled == []
