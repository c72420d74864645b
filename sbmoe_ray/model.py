"""The SB-MoE bi-encoder: one shared Hugging Face encoder, pooling, the SB-MoE head, optional L2 norm.

``embed(x) = normalize?( SBMoE( pool( encoder(x) ) ) )`` for queries and documents alike; with
``num_experts = 0`` there is no head and this is the plain fine-tuning baseline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from sbmoe_ray.backbones import encoder_defaults, load_backbone, resolve_model
from sbmoe_ray.errors import ConfigError
from sbmoe_ray.moe import SBMoE, InferenceTopK, Routing, validate_moe_settings

POOLINGS = ("mean", "cls")


@dataclass
class ModelConfig:
    """Everything that defines a bi-encoder; ``None`` means "what the base model's folder declares"."""

    base_model: str = "minilm"
    num_experts: int = 0
    top_k: int = 1
    inference_top_k: InferenceTopK = None
    expert_hidden: int | None = None
    activation: str = "relu"
    noisy_gating: bool = True
    expert_init_std: float = 0.02
    pooling: str | None = None
    normalize: bool | None = None
    max_length: int | None = None

    def validate(self, where: str = "model") -> None:
        validate_moe_settings(self.num_experts, self.top_k, self.inference_top_k, self.activation, where)
        if self.pooling not in (None, *POOLINGS):
            raise ConfigError(f"{where}.pooling={self.pooling!r}: allowed values are {POOLINGS}")
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 1):
            raise ConfigError(f"{where}.max_length={self.max_length!r}: must be a positive integer")

    def resolved(self) -> ModelConfig:
        """A copy with pooling, normalisation and max length filled in from the base model's folder."""
        defaults = encoder_defaults(resolve_model(self.base_model).source)
        values = asdict(self)
        for key in ("pooling", "normalize", "max_length"):
            if values[key] is None:
                values[key] = getattr(defaults, key)
        return ModelConfig(**values)


@dataclass
class EncoderOutput:
    queries: torch.Tensor
    passages: torch.Tensor
    routing: Routing | None    # routing of queries and passages together (queries first)


class BiEncoder(nn.Module):
    def __init__(self, backbone: nn.Module, pooling: str = "mean", normalize: bool = False,
                 head: SBMoE | None = None) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling={pooling!r}: allowed values are {POOLINGS}")
        self.backbone, self.pooling, self.normalize, self.head = backbone, pooling, normalize, head

    @property
    def hidden_size(self) -> int:
        return self.backbone.config.hidden_size

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)

    def project(self, pooled: torch.Tensor) -> tuple[torch.Tensor, Routing | None]:
        """Apply the SB-MoE head (if any) and the optional L2 normalisation to pooled embeddings."""
        routing = None
        if self.head is not None:
            pooled, routing = self.head(pooled)
        return (F.normalize(pooled, dim=-1) if self.normalize else pooled), routing

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, Routing | None]:
        return self.project(self.pool(input_ids, attention_mask))

    def forward(self, queries: Mapping[str, torch.Tensor], passages: Mapping[str, torch.Tensor]) -> EncoderOutput:
        """Queries and passages in one call, so that DDP sees every parameter used once per step."""
        pooled = torch.cat([self.pool(queries["input_ids"], queries["attention_mask"]),
                            self.pool(passages["input_ids"], passages["attention_mask"])])
        embeddings, routing = self.project(pooled)
        n = queries["input_ids"].shape[0]
        return EncoderOutput(embeddings[:n], embeddings[n:], routing)


def build_head(config: ModelConfig, hidden_size: int) -> SBMoE | None:
    if config.num_experts == 0:
        return None
    return SBMoE(hidden_size, config.num_experts, config.top_k, config.expert_hidden, config.activation,
                 config.noisy_gating, config.inference_top_k, config.expert_init_std)


def build_bi_encoder(config: ModelConfig, backbone: nn.Module | None = None) -> BiEncoder:
    """A bi-encoder for a *resolved* config; ``backbone`` overrides loading ``config.base_model``."""
    config.validate()
    backbone = backbone if backbone is not None else load_backbone(config.base_model)
    head = build_head(config, backbone.config.hidden_size)
    return BiEncoder(backbone, config.pooling or "mean", bool(config.normalize), head)
