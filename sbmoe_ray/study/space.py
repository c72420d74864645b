"""The search space of a study, as one table: one :class:`Param` per searched setting.

Each entry says how its YAML value (``space.<name>`` in a study config) is checked, how Optuna suggests a
value define-by-run (it may read the values chosen before it: ``top_k <= num_experts``), how the value
is applied to the trial's :class:`~sbmoe_ray.train.TrainConfig`, which Optuna distribution describes it
for parameter importances, and how it is shown in tables and run names. The space definition, the trial
config, the resume fingerprint, the importances and the report all loop over :data:`PARAMS`, so a new
search parameter is one entry here plus its line in the YAML.

Baselines: ``num_experts = 0`` (plain fine-tuning, or the zero-shot model with a frozen encoder) comes
only from the points the study enqueues first, one per base model; a baseline samples nothing after
``num_experts`` (those parameters belong to the SB-MoE head). Optuna categorical values must be
None/bool/int/float/str.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sbmoe_ray.study.arms import ARMS
from sbmoe_ray.train.config import TrainConfig

INFERENCE_MODES = ("top_k", "all")


@dataclass(frozen=True)
class Constant:
    """A value the space fixes (not an Optuna parameter): Tune merges it into the trial's parameters."""

    value: Any


@dataclass(frozen=True)
class Param:
    name: str
    default: Any                                        # the space value when a study gives none
    check: Callable[[Any, dict], str | None]            # (value, whole space) -> the rule it broke
    suggest: Callable[[Any, Any, dict], Any]            # (optuna trial, space value, chosen so far)
    apply: Callable[[TrainConfig, Any], TrainConfig]    # the value into the trial's config
    distribution: Callable[[list], Any]                 # observed values -> optuna distribution
    show: Callable[[Any], str]                          # for tables and run names


def _model(cfg: TrainConfig, **values) -> TrainConfig:
    return replace(cfg, model=replace(cfg.model, **values))


def _categorical(values: list):
    from optuna.distributions import CategoricalDistribution
    return CategoricalDistribution(sorted(set(values), key=str))


def _int_range(values: list):
    from optuna.distributions import IntDistribution
    return IntDistribution(min(values), max(values) + 1)


def _log_range(values: list):
    from optuna.distributions import FloatDistribution
    return FloatDistribution(min(values), max(values) * (1 + 1e-9), log=True)


def _short(value: float) -> str:
    """``1.4e-3`` (not ``1.4e-03``)."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _check_models(value, space) -> str | None:
    ok = isinstance(value, list) and value and all(isinstance(v, str) for v in value)
    return None if ok else "name at least one base model (a list of names, hub ids or folders)"


MAX_EXPERTS = 64      # the paper searches 3-12; each expert is an MLP of the hidden size, trained and held per trial


def _check_experts(value, space) -> str | None:
    counts = isinstance(value, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in value)
    ok = counts and all(0 <= n <= MAX_EXPERTS for n in value) and any(value) and len(set(value)) == len(value)
    return None if ok else (f"a list of distinct integers in [0, {MAX_EXPERTS}] (0 = the baseline) with at least one "
                            "expert count > 0")


def _check_top_k(value, space) -> str | None:
    smallest = min([n for n in space.get("num_experts", []) if isinstance(n, int) and n > 0] or [1])
    if isinstance(value, int) and not isinstance(value, bool):
        return None if 1 <= value <= smallest else \
            f"larger than num_experts={smallest}; a fixed top_k must be in [1, {smallest}] (the smallest expert count)"
    ok = (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value)
          and 1 <= value[0] <= value[1])
    if not ok:
        return "a fixed integer >= 1, or [low, high] searched in [low, min(N, high)]"
    largest = max([n for n in space.get("num_experts", []) if isinstance(n, int)] or [1])
    return None if value[0] <= largest else \
        f"low={value[0]} is above every expert count (the largest is {largest}); low must be in [1, {largest}]"


def _check_inference(value, space) -> str | None:
    ok = isinstance(value, list) and value and all(v in INFERENCE_MODES for v in value)
    return None if ok else f"allowed values are {list(INFERENCE_MODES)}"


def _check_log_range(value, space) -> str | None:
    ok = (isinstance(value, list) and len(value) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and not math.isinf(v)
                  for v in value)
          and value[0] <= value[1])
    return None if ok else "expected [low, high] with 0 < low <= high (searched log-uniformly)"


def _suggest_experts(trial, value, chosen):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Fixed parameter baseline")    # the enqueued 1
        if trial.suggest_int("baseline", 0, 0):
            return Constant(0)
    return trial.suggest_categorical("num_experts", [n for n in value if n > 0])


def _suggest_top_k(trial, value, chosen):
    if isinstance(value, int):
        return Constant(value)
    return trial.suggest_int("top_k", value[0], max(value[0], min(chosen["num_experts"], value[1])))


PARAMS: list[Param] = [
    Param("base_model", ["minilm", "minilm-l3"], _check_models,
          lambda trial, value, chosen: trial.suggest_categorical("base_model", value),
          lambda cfg, v: _model(cfg, base_model=v), _categorical, lambda v: str(v).rstrip("/").split("/")[-1]),
    Param("num_experts", [0, 3, 6, 9, 12], _check_experts, _suggest_experts,
          lambda cfg, v: _model(cfg, num_experts=v), _categorical, lambda v: f"N={v}"),
    Param("top_k", [1, 2], _check_top_k, _suggest_top_k,
          lambda cfg, v: _model(cfg, top_k=v), _int_range, lambda v: f"k={v}"),
    Param("inference", list(INFERENCE_MODES), _check_inference,
          lambda trial, value, chosen: trial.suggest_categorical("inference", value),
          lambda cfg, v: _model(cfg, inference_top_k="all" if v == "all" else None), _categorical,
          lambda v: "all" if v == "all" else "top-k"),
    Param("moe_lr", [1e-4, 1e-2], _check_log_range,
          lambda trial, value, chosen: trial.suggest_float("moe_lr", value[0], value[1], log=True),
          lambda cfg, v: replace(cfg, optim=replace(cfg.optim, moe_lr=v)), _log_range, lambda v: f"lr={_short(v)}"),
]
BY_NAME = {p.name: p for p in PARAMS}


def default_space() -> dict[str, Any]:
    return {p.name: p.default for p in PARAMS}


def define_space(trial, space: dict[str, Any]) -> dict[str, Any] | None:
    """Optuna define-by-run over :data:`PARAMS` in order; returns the constants (fixed values)."""
    chosen, constants = {}, {}
    for param in PARAMS:
        value = param.suggest(trial, space[param.name], chosen)
        if isinstance(value, Constant):
            value = constants[param.name] = value.value
        chosen[param.name] = value
        if param.name == "num_experts" and value == 0:
            break                      # a baseline: the rest belong to the SB-MoE head
    return constants or None


def apply(cfg: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """The trial's config: each sampled (or fixed) parameter applied to the study's template (a random-routing
    control also routes at random; stage 2's tuned baselines carry their own ``encoder_lr``)."""
    for param in PARAMS:
        if param.name in params:
            cfg = param.apply(cfg, params[param.name])
    if params.get("arm"):                                  # an attribution control (sbmoe_ray/study/arms.py)
        cfg = _model(cfg, **ARMS[params["arm"]].model(params))
    if "encoder_lr" in params:
        cfg = replace(cfg, optim=replace(cfg.optim, encoder_lr=params["encoder_lr"]))
    return cfg


def label(params: dict[str, Any], seed: int | None = None) -> str:
    """``minilm N=6 k=2 all lr=1.4e-3`` (at an encoder rate of stage 2's grid: ``... enc-lr=2e-4``; with a seed:
    ``... s1``); a baseline is ``minilm baseline``."""
    if params.get("num_experts") == 0:
        text = f"{BY_NAME['base_model'].show(params['base_model'])} baseline"
    else:
        text = " ".join(p.show(params[p.name]) for p in PARAMS if p.name in params)
    text += f" enc-lr={_short(params['encoder_lr'])}" if "encoder_lr" in params else ""
    if params.get("arm"):
        text += f" ({ARMS[params['arm']].label})"
    return text if seed is None else f"{text} s{seed}"


def space_draws(space: dict[str, Any], base_model: str, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` SB-MoE configurations of ``base_model`` drawn uniformly from the space (Optuna's seeded
    RandomSampler over the same define-by-run), as Optuna parameters: stage 2's controls, enqueued in stage 1
    so that the proxy check is not made among TPE's picks only (a range-restricted sample)."""
    import zlib

    import optuna

    sub = {**space, "base_model": [base_model], "num_experts": [v for v in space["num_experts"] if v > 0]}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=zlib.crc32(f"{seed}:{base_model}".encode())))
    draws = []
    for _ in range(n):
        trial = study.ask()
        define_space(trial, sub)
        study.tell(trial, 0.0)
        draws.append({"base_model": base_model, **trial.params})
    return draws
