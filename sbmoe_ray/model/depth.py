"""The depth ladder: train the top k Transformer layers of a base encoder from cached states of the layer below.

With the embeddings and the lower ``L - k`` layers frozen, what the trained part sees of a text never changes:
the token states after layer ``L - k``. They are computed once per base model and text
(:mod:`sbmoe_ray.evaluation.state_cache`) and every step, validation and test runs only the top k layers on
them, which is the same function as the whole encoder with those weights (in fp32 to rounding). ``k = 0`` is
the frozen encoder (the pooled-embedding cache of stage 1); ``all`` trains every layer and the embeddings (the
paper's regime). Tuning only the top layers keeps most of full fine-tuning's quality for BERT (Lee, Tang & Lin
2019, arXiv 1911.03090), and trainable depth is a fidelity that keeps the ranking of hyperparameters
(Carstensen et al., AutoML 2025, arXiv 2504.10735); the regime check (``bench/regime_check.py``) measures
whether it keeps this study's answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sbmoe_ray.errors import ConfigError
from sbmoe_ray.model.config import check_depth, depth_label  # noqa: F401  (torch-free; re-exported)


@dataclass
class HiddenStates:
    """Token states of a batch of texts after the frozen lower layers: ``hidden [B, L, H]``, a mask ``[B, L]``."""

    hidden: torch.Tensor
    attention_mask: torch.Tensor

    def to(self, device) -> HiddenStates:
        return HiddenStates(self.hidden.to(device), self.attention_mask.to(device))

    def __len__(self) -> int:
        return len(self.hidden)


def layers_of(backbone: nn.Module) -> nn.ModuleList:
    """The Transformer layers of a BERT-like encoder (``encoder.layer``)."""
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"optim.trained_layers: the base model ({type(backbone).__name__}) has no encoder.layer "
                          "list of Transformer layers; use trained_layers: all (or 0)")
    return layers


def freeze_below(backbone: nn.Module, k: int) -> None:
    """Freeze the embeddings and every layer but the top ``k``."""
    layers = layers_of(backbone)
    check_depth(k, type(backbone).__name__, len(layers), "optim.trained_layers")
    backbone.requires_grad_(False)
    for layer in layers[len(layers) - k:]:
        layer.requires_grad_(True)


def trained_prefixes(backbone: nn.Module, k: int, prefix: str = "backbone.") -> tuple[str, ...]:
    """State-dict key prefixes of the trained top ``k`` layers (what a depth-k checkpoint holds of the encoder)."""
    total = len(layers_of(backbone))
    return tuple(f"{prefix}encoder.layer.{i}." for i in range(total - k, total))


def top_forward(backbone: nn.Module, states: HiddenStates, k: int) -> torch.Tensor:
    """The top ``k`` layers of ``backbone`` on states of the layer below them: the last hidden state, as a
    whole forward of the encoder computes it (the same bidirectional mask, built by transformers)."""
    from transformers.masking_utils import create_bidirectional_mask

    hidden = states.hidden.float()      # a bf16 cache entry: the residual path runs in fp32, as in a whole forward
    mask = create_bidirectional_mask(config=backbone.config, inputs_embeds=hidden, attention_mask=states.attention_mask)
    layers = layers_of(backbone)
    for layer in layers[len(layers) - k:]:
        hidden = layer(hidden, mask)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return hidden


def lower_forward(backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int) -> torch.Tensor:
    """Token states after the embeddings and the lower ``L - k`` layers (what :func:`top_forward` takes)."""
    layers = layers_of(backbone)
    keep = len(layers) - k
    full = backbone.encoder.layer
    backbone.encoder.layer = nn.ModuleList(list(full)[:keep])
    try:
        return backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    finally:
        backbone.encoder.layer = full
