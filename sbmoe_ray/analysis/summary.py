"""A stage's answer as typed records, computed once (:mod:`sbmoe_ray.analysis.answer`, :mod:`.result`) and
read by attribute wherever it goes: the report's sections, the MLflow tracker, the exported model's card,
the terminal and the next stage. ``report/summary.json`` is its :meth:`StageSummary.to_dict`, and
:meth:`StageSummary.from_dict` reads it back (``sbmoe export`` of a study folder).

Per base model an :class:`Answer`: what validation prefers, the configuration it chose (:class:`Chosen`) and
that configuration's comparison with the baseline on every test set
(:class:`~sbmoe_ray.analysis.comparisons.Comparison`). Per base model the primary claim
(:class:`~sbmoe_ray.analysis.primary.PrimaryClaim`). The stage's method, budget and checks beside them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sbmoe_ray.analysis.comparisons import Comparison
from sbmoe_ray.analysis.power import PowerPlan
from sbmoe_ray.analysis.primary import PrimaryClaim


def _known(cls, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` restricted to ``cls``'s fields: a summary written by an older version still reads."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class Chosen:
    """The SB-MoE configuration validation chose for a base model (the mean objective over its seeds)."""

    group: str                      # its key (records.group_key)
    config: str                     # its label: ``minilm N=3 k=2 all lr=2.3e-3``
    params: dict[str, Any]
    seeds: list[int]
    trial_ids: list[str]
    objective: float
    objective_name: str             # val_loss or val_ndcg@10: the key it has in summary.json

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "config": self.config, "params": self.params, "seeds": self.seeds,
                "trial_ids": self.trial_ids, self.objective_name: self.objective}

    @classmethod
    def from_dict(cls, data: dict[str, Any], objective_name: str) -> Chosen:
        return cls(data["group"], data["config"], data["params"], list(data["seeds"]), list(data["trial_ids"]),
                   float(data.get(objective_name, float("nan"))), objective_name)


@dataclass
class Answer:
    """One base model's answer: what validation prefers, its choice, and the choice against the baseline per
    test set (the confirmatory family)."""

    base_model: str
    configurations: int
    preferred: str                  # sb-moe or baseline
    within_noise: bool              # the baseline preferred though SB-MoE's lead was within the noise
    baseline_objective: float
    chosen: Chosen
    datasets: dict[str, Comparison] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"base_model": self.base_model, "configurations": self.configurations, "preferred": self.preferred,
                "within_noise": self.within_noise, "baseline_objective": self.baseline_objective,
                "chosen": self.chosen.to_dict(), "datasets": {d: c.to_dict() for d, c in self.datasets.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any], objective_name: str) -> Answer:
        return cls(data["base_model"], data.get("configurations", 0), data.get("preferred", "sb-moe"),
                   bool(data.get("within_noise", False)), float(data.get("baseline_objective", float("nan"))),
                   Chosen.from_dict(data["chosen"], objective_name),
                   {d: Comparison(**_known(Comparison, c)) for d, c in data.get("datasets", {}).items()})


@dataclass
class ConfigurationRow:
    """One configuration stage 2 fine-tuned (promoted, control or baseline), with both stages' objectives."""

    base_model: str
    role: str                       # promoted, control or baseline
    config: str                     # its label
    group: str                      # its key (records.group_key)
    stage1_objective: float
    stage2_objective: float         # NaN where it has no stage-2 trial
    stage2_val_ndcg: float          # the mean validation nDCG@10 of its stage-2 replicates
    seeds: int

    def to_dict(self) -> dict[str, Any]:
        return {"base_model": self.base_model, "role": self.role, "config": self.config, "group": self.group,
                "stage1_objective": self.stage1_objective, "stage2_objective": self.stage2_objective,
                "stage2_val_ndcg@10": self.stage2_val_ndcg, "seeds": self.seeds}


@dataclass
class StageSummary:
    """What a stage found and how: the answer per base model, the primary claims, the method and the checks."""

    objective: str                              # the validation objective that chose
    budget: dict[str, Any]                      # what the stage spent (configurations, seeds, epochs, steps)
    comparisons: int                            # every comparison made, exploratory included
    confirmatory: int                           # the per-collection family the correction runs over
    correction: str
    alpha: float
    margin: float
    method: str                                 # how Δ is tested, in one sentence
    aa_check: dict[str, Any] | None             # the A/A sanity check's rejection rates (inference.aa_check)
    per_base_model: list[Answer]
    routing: dict[str, Any]                     # per base model and test set (routing.routing_summary)
    primary: list[PrimaryClaim] = field(default_factory=list)
    test_sets: dict[str, Any] = field(default_factory=dict)       # each test set's role (test_sets)
    pareto: dict[str, Any] | None = None        # stage 1 with a zero-shot validation set (pareto)
    attribution: dict[str, Any] = field(default_factory=dict)     # stage 2's controls (attribution)
    training_seeds: dict[str, Any] = field(default_factory=dict)  # selection and confirmation seeds
    power_plan: list[PowerPlan] = field(default_factory=list)     # stage 2's, from stage 1's claim
    confirmation_plan: dict[str, Any] | None = None               # stage 2's second, measured plan

    def answer(self, base_model: str) -> Answer | None:
        return next((a for a in self.per_base_model if a.base_model == base_model), None)

    def claim(self, base_model: str) -> PrimaryClaim | None:
        return next((c for c in self.primary if c.base_model == base_model), None)

    def chosen_configs(self) -> dict[str, str]:
        """Per base model, the label of the configuration validation chose."""
        return {a.base_model: a.chosen.config for a in self.per_base_model}

    def claimed(self) -> dict[str, set[str]]:
        """Per base model, the collections its primary claim is about."""
        return {c.base_model: set(c.collections) for c in self.primary}

    def to_dict(self) -> dict[str, Any]:
        """``summary.json``'s stage entry (an optional part only where the stage has it)."""
        out = {"objective": self.objective, "budget": self.budget, "comparisons": self.comparisons,
               "confirmatory": self.confirmatory, "correction": self.correction, "alpha": self.alpha,
               "margin": self.margin, "method": self.method, "aa_check": self.aa_check,
               "per_base_model": [a.to_dict() for a in self.per_base_model], "routing": self.routing,
               "primary": [c.to_dict() for c in self.primary]}
        optional = {"test_sets": self.test_sets, "pareto": self.pareto, "attribution": self.attribution,
                    "training_seeds": self.training_seeds, "power_plan": [p.to_dict() for p in self.power_plan],
                    "confirmation_plan": self.confirmation_plan}
        return {**out, **{k: v for k, v in optional.items() if v}}

    @classmethod
    def final(cls, summary_json: dict[str, Any]) -> tuple[str, StageSummary]:
        """The study's final stage and its summary, from ``summary.json`` (stage 2's where it ran)."""
        finetune = summary_json.get("finetune", {}).get("test", {})
        if finetune.get("per_base_model"):
            return "finetune", cls.from_dict(finetune)
        return "proxy", cls.from_dict(summary_json)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageSummary:
        objective = data.get("objective", "val_loss")
        plans = [PowerPlan(**_known(PowerPlan, p)) for p in data.get("power_plan", [])]
        return cls(objective, data.get("budget", {}), data.get("comparisons", 0), data.get("confirmatory", 0),
                   data.get("correction", "holm"), data.get("alpha", 0.05), data.get("margin", float("nan")),
                   data.get("method", ""), data.get("aa_check"),
                   [Answer.from_dict(a, objective) for a in data.get("per_base_model", [])], data.get("routing", {}),
                   [PrimaryClaim(**_known(PrimaryClaim, c)) for c in data.get("primary", [])],
                   data.get("test_sets", {}), data.get("pareto"), data.get("attribution", {}),
                   data.get("training_seeds", {}), plans, data.get("confirmation_plan"))
