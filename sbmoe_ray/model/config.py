"""What defines a bi-encoder (:class:`ModelConfig`), and the limits of the SB-MoE block's settings.

Kept free of torch so that a config file is checked in well under a second; :mod:`sbmoe_ray.model.bi_encoder`
builds the network from it and :mod:`sbmoe_ray.model.moe` holds the block (Sokli et al., 2025).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from sbmoe_ray.errors import ConfigError

POOLINGS = ("mean", "cls")
ACTIVATION_NAMES = ("gelu", "relu", "silu", "tanh")
ROUTINGS = ("learned", "random")       # random: the attribution control (sbmoe_ray/model/moe.py)
MIXTURES = ("residual", "authors")      # authors: their exact block, an attribution control
InferenceTopK = int | Literal["all"] | None


def validate_moe_settings(num_experts: int, top_k: int, inference_top_k: InferenceTopK = None,
                          activation: str = "relu", where: str = "model") -> None:
    """Raise one ConfigError naming the first bad setting and its allowed values."""
    if not isinstance(num_experts, int) or num_experts < 0:
        raise ConfigError(f"{where}.num_experts={num_experts!r}: must be an integer >= 0 (0 = no MoE block)")
    if num_experts == 0:
        return
    if not isinstance(top_k, int) or not 1 <= top_k <= num_experts:
        raise ConfigError(f"{where}.top_k={top_k!r}: must be an integer in [1, num_experts={num_experts}]")
    if inference_top_k not in (None, "all") and (
            not isinstance(inference_top_k, int) or not 1 <= inference_top_k <= num_experts):
        raise ConfigError(f"{where}.inference_top_k={inference_top_k!r}: must be None (same as top_k), "
                          f"'all', or an integer in [1, {num_experts}]")
    if activation not in ACTIVATION_NAMES:
        raise ConfigError(f"{where}.activation={activation!r}: allowed values are {list(ACTIVATION_NAMES)}")


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
    routing: str = "learned"
    # How the experts' mixture joins the embedding: "residual" (x + Σ w_k E_k(x), this project's block) or
    # "authors" (normalize(Σ g_k E_k(x)) + x, their untrained noise projection and default expert init: the
    # authors' exact block, an attribution control; sbmoe_ray/model/moe.py)
    mixture: str = "residual"

    def validate(self, where: str = "model") -> None:
        validate_moe_settings(self.num_experts, self.top_k, self.inference_top_k, self.activation, where)
        if self.routing not in ROUTINGS:
            raise ConfigError(f"{where}.routing={self.routing!r}: allowed values are {ROUTINGS}")
        if self.mixture not in MIXTURES:
            raise ConfigError(f"{where}.mixture={self.mixture!r}: allowed values are {MIXTURES}")
        if self.pooling not in (None, *POOLINGS):
            raise ConfigError(f"{where}.pooling={self.pooling!r}: allowed values are {POOLINGS}")
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 1):
            raise ConfigError(f"{where}.max_length={self.max_length!r}: must be a positive integer")

    def resolved(self) -> ModelConfig:
        """A copy with pooling, normalisation and max length filled in from the base model's folder."""
        from sbmoe_ray.model.backbones import encoder_defaults, resolve_model

        defaults = encoder_defaults(resolve_model(self.base_model).source)
        values = asdict(self)
        for key in ("pooling", "normalize", "max_length"):
            if values[key] is None:
                values[key] = getattr(defaults, key)
        return ModelConfig(**values)


def check_depth(k, base_model: str, num_layers: int, key: str) -> None:
    """The one rule of a depth: ``all`` or an integer in 0..the base model's layers (``key`` names the setting)."""
    if isinstance(k, int) and not 0 <= k <= num_layers:
        raise ConfigError(f"{key}={k}: base model {base_model!r} has {num_layers} layers; allowed are 'all' or "
                          f"0..{num_layers}")


def depth_label(k: int | None, num_layers: int | None = None) -> str:
    """``top 1 of 6 layers``, ``all layers``, ``frozen encoder``: how the report, the card and MLflow name a depth."""
    if k is None or k == "all":
        return "all layers" + (f" ({num_layers}) and the embeddings" if num_layers else " and the embeddings")
    if k == 0:
        return "frozen encoder (the head only)"
    return f"top {k} of {num_layers} layers" if num_layers else f"top {k} layer(s)"
