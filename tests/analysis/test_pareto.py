"""The in-domain vs zero-shot Pareto front holds exactly the configurations no other beats on both."""

from __future__ import annotations

from sbmoe_ray.analysis.pareto import pareto_front, pareto_summary
from sbmoe_ray.analysis.records import group_trials

from helpers import record


def test_the_front_drops_every_dominated_configuration():
    points = {1: (0.9, 0.30), 2: (0.8, 0.35), 3: (0.95, 0.25), 4: (0.85, 0.32)}   # (val_loss, zero-shot nDCG@10)
    records = [record("base", 0, {"a": {"q1": 0.5, "q2": 0.4}})]
    for i, (loss, zs) in points.items():
        r = record(f"t{i}", 3, {"a": {"q1": 0.5, "q2": 0.4}}, objective=loss, lr=10.0 ** -i)
        r.best_metrics["zs_val_ndcg@10"] = zs
        records.append(r)
    groups = group_trials(records)
    front = pareto_front(groups, "min")
    by_lr = {g.key: g.params.get("moe_lr") for g in groups}
    # t4 (0.85, 0.32) is beaten on both by t2 (0.80, 0.35); t1 (0.90, 0.30) too; t3 has the lowest zero-shot
    assert [by_lr[g.key] for g in front] == [1e-2]
    (part,) = pareto_summary(groups, "min", ["a"]).values()
    assert [p["zero_shot_objective"] for p in part["front"]] == [0.35]
