"""The search space: Optuna's define-by-run over the parameter table keeps top_k <= N, and baselines come only
from the points the study enqueues."""

from __future__ import annotations


def test_the_space_keeps_top_k_within_n_and_baselines_to_the_enqueued_trials():
    import optuna

    from sbmoe_ray.stages.proxy import baselines
    from sbmoe_ray.study.config import StudyConfig
    from sbmoe_ray.study.space import define_space

    study = StudyConfig.from_dict({"space": {"base_model": ["a", "b"], "num_experts": [0, 3, 6], "top_k": [1, 2]}})
    sampler = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for point in baselines(study):
        sampler.enqueue_trial(point)
    trials = []
    for i in range(30):
        trial = sampler.ask()
        constants = define_space(trial, study.space)
        trials.append({**trial.params, **(constants or {})})
        sampler.tell(trial, float(i % 5))
    assert [t["base_model"] for t in trials if t["num_experts"] == 0] == ["a", "b"]      # only the enqueued
    assert all(1 <= t["top_k"] <= min(t["num_experts"], 2) for t in trials if t["num_experts"])
