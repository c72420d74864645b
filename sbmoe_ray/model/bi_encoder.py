"""The SB-MoE bi-encoder: one shared Hugging Face encoder, pooling, the SB-MoE head, optional L2 norm.

``embed(x) = normalize?( SBMoE( pool( encoder(x) ) ) )`` for queries and documents alike; with
``num_experts = 0`` there is no head and this is the plain fine-tuning baseline. With a frozen encoder the
pooled embeddings can be computed once (:mod:`sbmoe_ray.evaluation.embedding_cache`) and fed to ``forward`` directly;
such a model may have no backbone at all. With ``trained_layers = k`` only the top k layers train, and
``forward`` also takes the cached token states of the layer below them (:mod:`sbmoe_ray.model.depth`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sbmoe_ray.errors import ConfigError
from sbmoe_ray.model.backbones import load_backbone
from sbmoe_ray.model.config import POOLINGS, ModelConfig
from sbmoe_ray.model.depth import HiddenStates, freeze_below, top_forward, trained_prefixes
from sbmoe_ray.model.moe import Routing, SBMoE

MODEL_CONFIG_FILE, WEIGHTS_FILE = "model_config.json", "model.pt"
# Token batches ({"input_ids", "attention_mask"}), cached token states of the layer below the trained ones
# (cached_layers), or, on the cached_head route, pooled embeddings [B, H].
EncoderInput = Mapping[str, torch.Tensor] | HiddenStates | torch.Tensor


@dataclass
class EncoderOutput:
    queries: torch.Tensor
    passages: torch.Tensor
    routing: Routing | None    # routing of queries and passages together (queries first)


class BiEncoder(nn.Module):
    def __init__(self, backbone: nn.Module | None, pooling: str = "mean", normalize: bool = False,
                 head: SBMoE | None = None, frozen_encoder: bool = False, hidden_size: int | None = None,
                 trained_layers: int | None = None) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling={pooling!r}: allowed values are {POOLINGS}")
        self.backbone, self.pooling, self.normalize, self.head = backbone, pooling, normalize, head
        # None: every layer and the embeddings train; k: the top k layers; 0: a frozen encoder
        self.trained_layers = 0 if frozen_encoder else trained_layers
        self.frozen_encoder = self.trained_layers == 0
        self.hidden_size = backbone.config.hidden_size if backbone is not None else hidden_size
        if self.trained_layers is not None and backbone is not None:
            freeze_below(backbone, self.trained_layers)

    def train(self, mode: bool = True) -> BiEncoder:
        super().train(mode)
        if self.trained_layers is not None and self.backbone is not None:
            self.backbone.eval()   # frozen layers are a fixed function: no dropout, as in the caches
            if self.trained_layers:
                for layer in self.backbone.encoder.layer[-self.trained_layers:]:
                    layer.train(mode)
        return self

    def frozen_key(self, key: str) -> bool:
        """Whether a state-dict key belongs to the frozen part of the encoder (not saved: the base model's)."""
        if self.trained_layers is None or not key.startswith("backbone."):
            return False
        return self.trained_layers == 0 or not key.startswith(trained_prefixes(self.backbone, self.trained_layers))

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.pool_hidden(hidden, attention_mask)

    def pool_hidden(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pool token states ``[B, L, H]`` into one embedding per text (mean over the mask, or CLS)."""
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

    def embed_inputs(self, inputs: EncoderInput) -> tuple[torch.Tensor, Routing | None]:
        """Embed token batches or (the cached_head route) pooled embeddings."""
        return self.project(self._pooled(inputs))

    def _pooled(self, inputs: EncoderInput) -> torch.Tensor:
        if isinstance(inputs, torch.Tensor):
            return inputs
        if isinstance(inputs, HiddenStates):
            return self.pool_hidden(top_forward(self.backbone, inputs, self.trained_layers), inputs.attention_mask)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_encoder):
            return self.pool(inputs["input_ids"], inputs["attention_mask"])

    def forward(self, queries: EncoderInput, passages: EncoderInput) -> EncoderOutput:
        """Queries and passages in one call, so that DDP sees every parameter used once per step."""
        q, p = self._pooled(queries), self._pooled(passages)
        embeddings, routing = self.project(torch.cat([q, p]))
        return EncoderOutput(embeddings[: len(q)], embeddings[len(q):], routing)


def build_head(config: ModelConfig, hidden_size: int) -> SBMoE | None:
    if config.num_experts == 0:
        return None
    return SBMoE(hidden_size, config.num_experts, config.top_k, config.expert_hidden, config.activation,
                 config.noisy_gating, config.inference_top_k, config.expert_init_std, config.routing,
                 config.mixture)


def build_bi_encoder(config: ModelConfig, backbone: nn.Module | None = None, frozen_encoder: bool = False,
                     hidden_size: int | None = None, trained_layers: int | None = None) -> BiEncoder:
    """A bi-encoder for a *resolved* config; ``backbone`` overrides loading ``config.base_model``.

    ``hidden_size`` without a backbone builds the backbone-less model of the cached_head route;
    ``trained_layers`` k freezes all but the top k layers (None: every layer trains).
    """
    config.validate()
    if hidden_size is None:
        backbone = backbone if backbone is not None else load_backbone(config.base_model)
        hidden_size = backbone.config.hidden_size
    head = build_head(config, hidden_size)
    return BiEncoder(backbone, config.pooling or "mean", bool(config.normalize), head, frozen_encoder, hidden_size,
                     trained_layers)


def save_model(model: BiEncoder, config: ModelConfig, folder: Path) -> None:
    """Config + the trained weights only: the frozen part of the encoder is the base model's, rebuilt on load
    (a depth-k checkpoint holds the top k layers and the head)."""
    state = {k: v for k, v in model.state_dict().items() if not model.frozen_key(k)}
    torch.save(state, folder / WEIGHTS_FILE)
    meta = {"config": asdict(config), "frozen_encoder": model.frozen_encoder, "hidden_size": model.hidden_size,
            "trained_layers": model.trained_layers}
    (folder / MODEL_CONFIG_FILE).write_text(json.dumps(meta))


def load_model(folder: Path, with_backbone: bool = True) -> tuple[BiEncoder, ModelConfig]:
    """A saved model; ``with_backbone=False`` (frozen encoders only) gives the head for cached embeddings."""
    meta = json.loads((folder / MODEL_CONFIG_FILE).read_text())
    config, frozen = ModelConfig(**meta["config"]), meta["frozen_encoder"]
    model = build_bi_encoder(config, frozen_encoder=frozen, hidden_size=None if with_backbone else meta["hidden_size"],
                             trained_layers=meta.get("trained_layers"))
    load_weights(model, folder)
    return model, config


def load_weights(model: BiEncoder, folder: Path) -> None:
    """Load saved weights into ``model``; only the frozen part of the encoder may be absent from the file."""
    state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not model.frozen_key(k)]
    if missing or unexpected:
        raise ValueError(f"{folder / WEIGHTS_FILE}: missing {missing[:5]}, unexpected {unexpected[:5]}")
