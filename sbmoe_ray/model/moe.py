"""The SB-MoE block (Sokli et al., 2025, arXiv 2510.15683) and its expert-load statistics.

One Mixture-of-Experts block on the pooled embedding ``x`` (shape ``[B, H]``)::

    logits = Gate(x)                                   Gate: Linear(H, H/2) -> ReLU -> Linear(H/2, N)
    logits += eps * softplus(W_noise x)                training only, eps ~ N(0, 1)   (noisy top-k gating)
    p      = softmax(logits)                           [B, N]
    K      = top-k indices of p                        k = top_k in training, inference_top_k in eval
    w_i    = p_i / sg(sum_{j in K} p_j)  for i in K,   0 otherwise
    y      = x + sum_{i in K} w_i * E_i(x)             E_i: Linear(H, h) -> act -> Linear(h, H)

Design choices, and why they differ from the authors' code:

* **Straight-through renormalisation** (``sg`` = stop-gradient). In the forward pass the kept weights are
  exactly renormalised (k non-zero weights that sum to 1). In the backward pass the denominator is a
  constant, so ``dw_i/dlogit_j = (p_i / S)(delta_ij - p_j)`` is non-zero for *every* k, k = 1 included.
  The authors compute ``normalize(sum_k g_k E_k(x)) + x``: with top-1, ``normalize(g E(x)) = normalize(E(x))``
  and the gate receives no gradient at all, so routing never leaves its random initialisation.
* **Plain residual sum, no normalisation of the mixture.** Normalising the mixture is what cancels the gate
  weight; the bi-encoder may still L2-normalise the final ``y`` (cosine models such as MiniLM), which keeps
  the relative weights of the experts.
* **Near-identity start.** The last layer of every expert starts with small weights
  (``expert_init_std``), so an untrained head barely moves a pretrained embedding: training starts from
  the zero-shot model rather than from a randomly perturbed one, while the gate still gets gradient.
* **The noise projection is a trained parameter** (it is a registered sub-module; the authors' optimiser
  leaves it out). The Switch-Transformer load-balancing loss lives in :mod:`sbmoe_ray.model.losses`.
* **Random routing, the control** (``routing="random"``; the authors' code has one): no gate is learned. Each
  input goes to the top-k experts of a fixed random projection of itself **centred** (a buffer drawn at
  initialisation and saved with the weights; the centre is the running mean of the training inputs, frozen
  outside training and saved too), the k chosen weighted equally. Mean-pooled embeddings share one common
  direction (anisotropy: Ethayarajh 2019), so an uncentred projection can send nearly every input to the same
  experts; centred, the projection splits the inputs by how they differ. The routing is input-dependent and the same
  for a query and a document that lie close, but nothing about it is trained: the same experts and
  parameters as the learned block, without the learned assignment. A gain that survives against it is
  a gain of learned routing (issue 22's attribution controls).
* **The authors' exact block, the control** (``mixture="authors"``): ``normalize(Σ_k g_k E_k(x)) + x`` with
  PyTorch's default initialisation of the experts and a noise projection that never trains (FaySokli/SB-MoE,
  read at commit 44f999a; ``../shared/docs/science-notes.md``), so that a study can tell a replication of the
  paper's block from this variant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sbmoe_ray.errors import ConfigError
from sbmoe_ray.model.config import ACTIVATION_NAMES, ROUTINGS, InferenceTopK, validate_moe_settings

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
assert sorted(ACTIVATIONS) == list(ACTIVATION_NAMES)


@dataclass
class Routing:
    """What the gate decided for one batch. ``weights`` has exactly k non-zeros per row."""

    probs: torch.Tensor      # [B, N] softmax of the (noisy, in training) gate logits
    topk: torch.Tensor       # [B, k] indices of the selected experts
    weights: torch.Tensor    # [B, N] renormalised mixture weights (straight-through, see module doc)


class SBMoE(nn.Module):
    """Single-block Mixture of Experts on a pooled embedding; see the module docstring for the formula."""

    def __init__(self, hidden_size: int, num_experts: int, top_k: int = 1, expert_hidden: int | None = None,
                 activation: str = "relu", noisy_gating: bool = True, inference_top_k: InferenceTopK = None,
                 expert_init_std: float = 0.02, routing: str = "learned", mixture: str = "residual") -> None:
        super().__init__()
        validate_moe_settings(num_experts, top_k, inference_top_k, activation)
        if routing not in ROUTINGS:
            raise ConfigError(f"routing={routing!r}: allowed values are {ROUTINGS}")
        if num_experts < 1:
            raise ConfigError(f"num_experts={num_experts}: an SBMoE block needs >= 1 expert")
        expert_hidden = expert_hidden or hidden_size // 2
        self.num_experts, self.top_k, self.inference_top_k = num_experts, top_k, inference_top_k
        self.authors = mixture == "authors"
        self.gate = nn.Sequential(nn.Linear(hidden_size, hidden_size // 2), nn.ReLU(),
                                  nn.Linear(hidden_size // 2, num_experts))
        self.noise = nn.Linear(hidden_size, num_experts) if noisy_gating and routing == "learned" else None
        self.random_routing = routing == "random"
        if self.random_routing:
            self.gate = None
            self.register_buffer("projection", torch.randn(hidden_size, num_experts))
            self.register_buffer("centre", torch.zeros(hidden_size))
            self.register_buffer("centred_on", torch.zeros(()))      # inputs the centre averages
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden_size, expert_hidden), ACTIVATIONS[activation](),
                          nn.Linear(expert_hidden, hidden_size))
            for _ in range(num_experts))
        if self.authors:                       # their block: default init, the noise projection never trained
            if self.noise is not None:
                self.noise.requires_grad_(False)
            return
        for expert in self.experts:
            nn.init.normal_(expert[-1].weight, std=expert_init_std)
            nn.init.zeros_(expert[-1].bias)

    def active_k(self) -> int:
        if self.training or self.inference_top_k is None:
            return self.top_k
        return self.num_experts if self.inference_top_k == "all" else self.inference_top_k

    def route(self, x: torch.Tensor) -> Routing:
        if self.random_routing:
            return self._random_route(x)
        logits = self.gate(x).float()
        if self.training and self.noise is not None:
            logits = logits + torch.randn_like(logits) * F.softplus(self.noise(x).float())
        probs = logits.softmax(dim=-1)
        k = self.active_k()
        topk = probs.topk(k, dim=-1).indices
        kept = torch.zeros_like(probs).scatter(-1, topk, 1.0) * probs
        weights = kept / kept.sum(dim=-1, keepdim=True).detach()
        return Routing(probs=probs, topk=topk, weights=weights)

    def _random_route(self, x: torch.Tensor) -> Routing:
        """The top-k experts of a fixed random projection of ``x`` less the training inputs' running mean, weighted
        equally; uniform probabilities."""
        k = self.active_k()
        if self.training:
            with torch.no_grad():
                n = x.shape[0]
                total = self.centred_on + n
                self.centre.mul_(self.centred_on / total).add_(x.detach().float().sum(0) / total)
                self.centred_on.fill_(total)
        topk = ((x.float() - self.centre) @ self.projection).topk(k, dim=-1).indices
        probs = torch.full((x.shape[0], self.num_experts), 1.0 / self.num_experts, device=x.device)
        weights = torch.zeros_like(probs).scatter(-1, topk, 1.0 / k)
        return Routing(probs=probs, topk=topk, weights=weights)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Routing]:
        routing = self.route(x)
        # Dense evaluation of all experts: N small MLPs on one [B, H] matrix cost less than gathering
        # per-expert sub-batches, and every expert's parameters take part in the graph (DDP-friendly).
        expert_out = torch.stack([expert(x) for expert in self.experts], dim=1)       # [B, N, H]
        mixture = (routing.weights.to(expert_out.dtype).unsqueeze(-1) * expert_out).sum(dim=1)
        if self.authors:
            mixture = F.normalize(mixture, dim=-1)        # with top-1 the gate's weight cancels here (see above)
        return x + mixture, routing


@dataclass
class ExpertLoad:
    """Expert-load statistics accumulated over batches, kept as sums so that merging is exact.

    ``counts[i]`` top-k assignments to expert i, ``prob_sum[i]`` summed gate probability of expert i,
    ``entropy_sum`` summed per-example routing entropy (nats), ``examples`` routed examples. Merging two
    accumulators (other batches, other workers) adds the sums; summaries are computed only at the end.
    """

    counts: np.ndarray
    prob_sum: np.ndarray
    entropy_sum: float = 0.0
    examples: int = 0

    @classmethod
    def empty(cls, num_experts: int) -> ExpertLoad:
        return cls(np.zeros(num_experts), np.zeros(num_experts))

    @property
    def num_experts(self) -> int:
        return len(self.counts)

    def update(self, routing: Routing) -> None:
        probs = routing.probs.detach().float()
        self.counts += np.bincount(routing.topk.reshape(-1).cpu().numpy(), minlength=self.num_experts)
        self.prob_sum += probs.sum(dim=0).cpu().double().numpy()
        self.entropy_sum += float(-(probs * probs.clamp_min(1e-12).log()).sum())
        self.examples += probs.shape[0]

    def __add__(self, other: ExpertLoad) -> ExpertLoad:
        return ExpertLoad(self.counts + other.counts, self.prob_sum + other.prob_sum,
                          self.entropy_sum + other.entropy_sum, self.examples + other.examples)

    def to_tensor(self) -> torch.Tensor:
        """Flat float64 tensor for ``all_reduce(SUM)`` across workers; inverse of :meth:`from_tensor`."""
        return torch.tensor(np.concatenate([self.counts, self.prob_sum, [self.entropy_sum, self.examples]]),
                            dtype=torch.float64)

    @classmethod
    def from_tensor(cls, flat: torch.Tensor) -> ExpertLoad:
        values = flat.double().cpu().numpy()
        n = (len(values) - 2) // 2
        return cls(values[:n].copy(), values[n:2 * n].copy(), float(values[-2]), int(round(values[-1])))

    def summary(self) -> dict[str, float]:
        """Per-expert share and mean gate probability, routing entropy, CV and max/mean imbalance of the load."""
        if self.examples == 0:
            return {}
        share = self.counts / self.counts.sum()
        stats = {f"expert_{i}.share": float(s) for i, s in enumerate(share)}
        stats.update({f"expert_{i}.mean_prob": float(p / self.examples) for i, p in enumerate(self.prob_sum)})
        mean_count = self.counts.mean()
        stats["routing_entropy"] = self.entropy_sum / self.examples
        stats["load_cv"] = float(self.counts.std() / mean_count)
        stats["load_max_over_mean"] = float(self.counts.max() / mean_count)
        return stats
