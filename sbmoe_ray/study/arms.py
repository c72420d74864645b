"""The attribution controls of stage 2, one table: a new control is one entry here.

A gain of fine-tuned SB-MoE over plain fine-tuning may be any trained head's (stage 1 lifted a cut encoder by
0.25-0.36 nDCG@10 with heads of every kind), so the configuration stage 2 chooses is also compared with controls
built from it (:func:`sbmoe_ray.stages.promotion.controls_of`): the same head with one thing taken away. Each
:class:`Arm` says how its parameters follow from the chosen configuration's (``params``), what it changes in the
model (``model``), when the budget drops it (``drop_rank``: lower first), what a gain that survives against it
is credited to (``credit``), and how the report and the curves name and colour it. The budget's drop order
(:mod:`sbmoe_ray.stages.budget`), the promotions, the report's attribution table and the learning curves read
this table. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Arm:
    name: str                                       # finetune.attribution's value; the configuration's ``arm``
    label: str                                      # the role in promotions, the report, the curves
    params: Callable[[dict[str, Any]], dict[str, Any]]   # the chosen configuration's params -> the control's
    model: Callable[[dict[str, Any]], dict[str, Any]]    # the control's params -> model config overrides
    drop_rank: int                                  # the budget drops lower ranks first
    credit: str                                     # a gain that survives against it is a gain of ...
    color: str                                      # its curves (matplotlib)


def _dense(params: dict[str, Any]) -> dict[str, Any]:
    return {**params, "num_experts": 1, "top_k": 1}


def _capacity(params: dict[str, Any]) -> dict[str, Any]:
    return {**params, "num_experts": 1, "top_k": 1, "width_of": params.get("num_experts", 1)}


def _wide(params: dict[str, Any]) -> dict[str, Any]:
    """One expert as wide as all N of the chosen configuration together (its hidden size N x H/2)."""
    from sbmoe_ray.model.backbones import hidden_size

    return {"expert_hidden": params["width_of"] * (hidden_size(params["base_model"]) // 2)}


ARMS: dict[str, Arm] = {arm.name: arm for arm in (
    # the same head with one expert: a residual MLP with the active parameters of one expert
    Arm("dense_adapter", "dense adapter", _dense, lambda p: {}, 3, "the experts", "tab:green"),
    # one expert as wide as the N together: the total capacity of the head, without routing
    Arm("dense_capacity", "dense adapter (capacity)", _capacity, _wide, 2, "the experts beyond capacity",
        "tab:olive"),
    # the same experts routed by a fixed random projection of the centred input: nothing learned about routing
    Arm("random_routing", "random routing", lambda p: dict(p), lambda p: {"routing": "random"}, 1,
        "learned routing", "tab:purple"),
    # the authors' block (normalised mixture, noisy top-1 training, untrained noise projection): a replication
    Arm("authors_block", "authors' block", lambda p: {**p, "top_k": 1}, lambda p: {"mixture": "authors"}, 0,
        "this project's departures from the authors' block", "tab:brown"),
)}
DEFAULT = ["dense_adapter", "random_routing"]          # finetune.attribution's default
DECISIVE = "dense_adapter"                              # a gain is the experts' only if it survives against it


def labels() -> dict[str, Arm]:
    """The arms by label (the role their promotions carry), read from the table when asked."""
    return {arm.label: arm for arm in ARMS.values()}


def is_arm(role: str) -> bool:
    """Whether a promotion's role is an attribution control's."""
    return role in labels()


def control_params(arm: str, chosen: dict[str, Any]) -> dict[str, Any]:
    """The parameters of control ``arm`` built from the chosen configuration's."""
    return {**ARMS[arm].params(chosen), "arm": arm}


def by_drop_rank(roles: list[str]) -> list[str]:
    """Arm labels in the order the budget drops them."""
    return sorted(roles, key=lambda r: labels()[r].drop_rank)
