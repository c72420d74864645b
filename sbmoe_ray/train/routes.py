"""The training route, chosen once: what each route builds (inputs, model, step), as one table.

:attr:`TrainConfig.route <sbmoe_ray.train.config.TrainConfig.route>` names the route; :data:`ROUTES`
says what it builds. Nothing below the worker's entry point looks at the flags again (Tevatron picks its
GradCache trainer the same way: ``GCTrainer if grad_cache else Trainer``). ``zero_shot`` has no entry:
nothing trains, the driver evaluates the base model (:func:`sbmoe_ray.train.launch.fit`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sbmoe_ray.model.backbones import hidden_size, set_attention_dropout
from sbmoe_ray.model.bi_encoder import BiEncoder, build_bi_encoder
from sbmoe_ray.model.losses import build_loss
from sbmoe_ray.train.config import TrainConfig
from sbmoe_ray.train.inputs import PairData, cached_inputs, layer_inputs, token_inputs
from sbmoe_ray.train.step import CachedGradientStep, Objective, WholeBatchStep

Step = Callable[..., tuple]


def head_model(cfg: TrainConfig) -> BiEncoder:
    """The ``cached_head`` model: the SB-MoE head alone (the frozen encoder lives in the cache)."""
    torch.manual_seed(cfg.run.seed)
    return build_bi_encoder(cfg.model, frozen_encoder=True, hidden_size=hidden_size(cfg.model.base_model))


def encoder_model(cfg: TrainConfig) -> BiEncoder:
    """The whole bi-encoder (frozen when ``encoder_lr = 0``; all but its top ``optim.trained_layers`` frozen),
    with the memory settings applied."""
    torch.manual_seed(cfg.run.seed)
    model = build_bi_encoder(cfg.model, frozen_encoder=cfg.frozen, trained_layers=cfg.depth)
    if cfg.optim.attention_dropout is not None:
        set_attention_dropout(model.backbone, cfg.optim.attention_dropout)
    if cfg.memory.gradient_checkpointing:
        model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def whole_batch(cfg: TrainConfig, objective: Objective, device: torch.device) -> Step:
    return WholeBatchStep(objective, device, cfg.memory.precision)


def cached_gradient(cfg: TrainConfig, objective: Objective, device: torch.device) -> Step:
    return CachedGradientStep(objective, device, cfg.memory.precision, cfg.memory.grad_cache_chunk)


@dataclass(frozen=True)
class Route:
    """What a training route builds: the worker's inputs, its model and its step."""

    inputs: Callable[[TrainConfig, torch.device], PairData]
    model: Callable[[TrainConfig], BiEncoder]
    step: Callable[[TrainConfig, Objective, torch.device], Step]


ROUTES: dict[str, Route] = {
    "cached_head": Route(cached_inputs, head_model, whole_batch),
    "cached_layers": Route(layer_inputs, encoder_model, whole_batch),
    "live": Route(token_inputs, encoder_model, whole_batch),
    "cached_gradient": Route(token_inputs, encoder_model, cached_gradient),
}


def build_model(cfg: TrainConfig) -> BiEncoder:
    """The model a worker of this config trains."""
    return ROUTES[cfg.route].model(cfg)


def objective_for(cfg: TrainConfig, rank: int = 0, world: int = 1) -> Objective:
    return Objective(build_loss(cfg.loss.name, cfg.loss.temperature), cfg.loss.load_balancing, rank, world)
