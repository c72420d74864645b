"""The SB-MoE block as a sentence-transformers module, at inference (Sokli et al. 2025, arXiv 2510.15683).

This file is copied into every model folder ``sbmoe export`` writes, and needs only torch and
sentence-transformers (not sbmoe-ray): ``SentenceTransformer(folder, trust_remote_code=True)`` loads it.
It computes what ``sbmoe_ray.model.moe.SBMoE`` computes in eval mode (no gate noise):

    p = softmax(gate(x)),  K = top-k of p,  w_i = p_i / Σ_{j∈K} p_j  (i ∈ K, else 0)
    y = x + Σ_i w_i · expert_i(x)

with ``gate`` = Linear(H, H/2) → ReLU → Linear(H/2, N) and ``expert_i`` = Linear(H, E) → act → Linear(E, H),
applied to the pooled sentence embedding (before the optional normalisation).
"""

from __future__ import annotations

import torch
from torch import nn

try:                                  # sentence-transformers >= 6
    from sentence_transformers.base.modules.module import Module
except ImportError:                   # pragma: no cover - sentence-transformers 5
    from sentence_transformers.models import Module

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class SBMoEHead(Module):
    """Gate and experts on ``features["sentence_embedding"]``, the gated mixture added back as a residual."""

    config_keys = ["hidden_size", "num_experts", "top_k", "expert_hidden", "activation"]

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, expert_hidden: int,
                 activation: str = "relu") -> None:
        super().__init__()
        self.hidden_size, self.num_experts, self.top_k = hidden_size, num_experts, top_k
        self.expert_hidden, self.activation = expert_hidden, activation
        self.gate = nn.Sequential(nn.Linear(hidden_size, hidden_size // 2), nn.ReLU(),
                                  nn.Linear(hidden_size // 2, num_experts))
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden_size, expert_hidden), ACTIVATIONS[activation](),
                          nn.Linear(expert_hidden, hidden_size)) for _ in range(num_experts))

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = features["sentence_embedding"]
        probs = self.gate(x).float().softmax(dim=-1)
        top = probs.topk(self.top_k, dim=-1).indices
        kept = torch.zeros_like(probs).scatter(-1, top, 1.0) * probs
        weights = kept / kept.sum(dim=-1, keepdim=True)
        expert_out = torch.stack([expert(x) for expert in self.experts], dim=1)
        features["sentence_embedding"] = x + (weights.to(expert_out.dtype).unsqueeze(-1) * expert_out).sum(dim=1)
        features["sbmoe_top1"] = top[:, 0]
        return features

    def get_embedding_dimension(self) -> int:
        return self.hidden_size

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=safe_serialization)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token=None, cache_folder=None, revision=None,
             local_files_only: bool = False, **kwargs) -> SBMoEHead:
        """Config and weights (the base class restores the config only)."""
        hub = {"subfolder": subfolder, "token": token, "cache_folder": cache_folder, "revision": revision,
               "local_files_only": local_files_only}
        module = cls(**{k: v for k, v in cls.load_config(model_name_or_path, **hub).items() if k in cls.config_keys})
        return cls.load_torch_weights(model_name_or_path=model_name_or_path, model=module, **hub)
