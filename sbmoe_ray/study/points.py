"""What one trial of a stage trains (:class:`TrialPoint`: a configuration's parameters and its replicate; in
stage 2 also the configuration's role and the stage-1 trials it was promoted from), and what stage 1 hands
stage 2 (:class:`Promotion`).

Ray Tune hands a trial its config as a plain dict. In stage 1 that is the searcher's parameters plus, with
seeds, the index Tune's ``Repeater`` adds (``__trial_index__``); in stage 2 it is one point of a grid,
``{"point": {...}}``. :meth:`TrialPoint.of` reads either, so the trial, the MLflow callback and the
report see one typed record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

REPLICATE_KEY = "__trial_index__"       # ray.tune.search.repeater.TRIAL_INDEX: the replicate's index
# Stage 2's confirmation replicates are 1000, 1001, ... (selection: 0 .. finetune.seeds - 1), so their training
# seeds (run.seed + replicate) never meet the seeds stage 2 chose on (sbmoe_ray/stages/confirm.py)
CONFIRM_OFFSET = 1000


def seeds_used(first_seed: int, selection: int, confirmation: int) -> dict[str, list[int]]:
    """The training seeds of selection and of confirmation (disjoint), for ``summary.json``."""
    return {"selection": [first_seed + r for r in range(selection)],
            "confirmation": [first_seed + CONFIRM_OFFSET + r for r in range(confirmation)]}


@dataclass(frozen=True)
class TrialPoint:
    params: dict[str, Any]
    replicate: int = 0
    role: str | None = None                  # stage 2: promoted, control or baseline
    stage1_trials: tuple[str, ...] = field(default=())

    @classmethod
    def of(cls, config: dict[str, Any]) -> TrialPoint:
        """The point of a Tune trial's config (stage 1: the searcher's; stage 2: a grid point)."""
        point = config.get("point")
        if point is None:
            return cls({k: v for k, v in config.items() if k != REPLICATE_KEY}, int(config.get(REPLICATE_KEY, 0)))
        return cls(dict(point["params"]), int(point.get(REPLICATE_KEY, 0)), point.get("role"),
                   tuple(point.get("stage1_trials") or ()))

    def grid_value(self) -> dict[str, Any]:
        """The point as a value of stage 2's grid (``{"point": tune.grid_search([...])}``)."""
        return {"params": self.params, REPLICATE_KEY: self.replicate, "role": self.role,
                "stage1_trials": list(self.stage1_trials)}


@dataclass(frozen=True)
class Promotion:
    """What stage 1 hands stage 2 for one configuration: its base model, why it is fine-tuned (``promoted``:
    among the top by the stage-1 objective; ``control``: drawn from the space (or at random from the rest);
    ``baseline``: plain fine-tuning), its parameters, and where it came from in stage 1."""

    base_model: str
    role: str
    params: dict[str, Any]
    stage1_group: str | None = None
    stage1_objective: float = float("nan")
    stage1_trials: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Promotion:
        return cls(**{**values, "stage1_trials": tuple(values.get("stage1_trials") or ())})

    def to_dict(self) -> dict[str, Any]:
        return {"base_model": self.base_model, "role": self.role, "params": self.params,
                "stage1_group": self.stage1_group, "stage1_objective": self.stage1_objective,
                "stage1_trials": list(self.stage1_trials)}

    def point(self, replicate: int) -> TrialPoint:
        """Replicate ``replicate`` of this configuration as a stage-2 trial."""
        return TrialPoint(self.params, replicate, self.role, self.stage1_trials)
