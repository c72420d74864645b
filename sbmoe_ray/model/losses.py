"""Training losses: in-batch-negatives contrastive loss (the registry :data:`LOSSES`), and the
Switch-Transformer load-balancing loss of the SB-MoE router."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sbmoe_ray.model.moe import Routing


class InBatchNegativesLoss(nn.Module):
    """Contrastive loss with in-batch negatives (a.k.a. MultipleNegativesRankingLoss, InfoNCE).

    For queries ``q_1..q_B`` and their positive passages ``d_1..d_M`` (``M >= B``; the passages of other
    queries, and of other workers when gathered, are the negatives)::

        L = -1/B * sum_i log( exp(q_i . d_i / tau) / sum_j exp(q_i . d_j / tau) )

    ``offset`` is the index of ``d_1`` among the passages (non-zero when the passages were gathered from
    several data-parallel workers and these queries are a later worker's). References: Henderson et al.
    2017 (arXiv 1705.00652); van den Oord et al. 2018 (arXiv 1807.03748); Karpukhin et al. 2020 (DPR).
    """

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature={temperature!r}: must be > 0")
        self.temperature = temperature

    def forward(self, queries: torch.Tensor, passages: torch.Tensor,
                offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the loss and the in-batch accuracy (share of queries whose positive scores highest)."""
        scores = queries.float() @ passages.float().T / self.temperature        # [B, M]
        labels = torch.arange(queries.shape[0], device=queries.device) + offset
        loss = F.cross_entropy(scores, labels)
        accuracy = (scores.argmax(dim=-1) == labels).float().mean()
        return loss, accuracy


def load_balancing_loss(routing: Routing) -> torch.Tensor:
    """Switch-Transformer auxiliary loss ``N * sum_i f_i * P_i`` (Fedus et al. 2021, arXiv 2101.03961, eq. 4).

    ``f_i`` is the share of top-k assignments that went to expert i (no gradient), ``P_i`` the mean gate
    probability of expert i. It equals 1 for a perfectly uniform router and grows as routing collapses;
    multiply by a small coefficient (e.g. 0.01) and add it to the contrastive loss.
    """
    num_experts = routing.probs.shape[-1]
    counts = torch.bincount(routing.topk.reshape(-1), minlength=num_experts).to(routing.probs.dtype)
    share = counts / counts.sum()
    return num_experts * (share * routing.probs.mean(dim=0)).sum()


# A new loss: one class above (``forward(queries, passages, offset) -> (loss, accuracy)``, built from
# ``temperature``) and one entry here; select it with ``loss.name`` in a config.
LOSSES: dict[str, type[nn.Module]] = {"in_batch_negatives": InBatchNegativesLoss}


def build_loss(name: str, temperature: float, where: str = "config.loss") -> nn.Module:
    """The contrastive loss named ``name`` (a key of :data:`LOSSES`)."""
    if name not in LOSSES:
        from sbmoe_ray.errors import ConfigError

        raise ConfigError(f"{where}.name={name!r}: allowed values are {sorted(LOSSES)}; add a loss to "
                          "sbmoe_ray.model.losses.LOSSES")
    return LOSSES[name](temperature)
