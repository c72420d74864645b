"""One training step: the objective over every worker's passages, and the two ways to backpropagate it.

Distributed semantics: the global batch of B pairs is split into W contiguous shards of B/W; passage
embeddings are all-gathered *with gradient*, so every query sees all B passages as negatives and W
workers compute exactly the gradient of one worker with batch B (DDP averages the per-worker means).
The load-balancing loss is per worker (as in Switch Transformer).

* :class:`WholeBatchStep`: one forward and backward of the whole batch (DDP averages gradients).
* :class:`CachedGradientStep`: GradCache (Gao, Zhang, Han, Callan 2021, arXiv 2101.06983), the same
  gradient at the activation memory of ``memory.grad_cache_chunk`` texts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sbmoe_ray.model.bi_encoder import BiEncoder, EncoderOutput
from sbmoe_ray.model.losses import load_balancing_loss
from sbmoe_ray.runtime.precision import autocast


def all_sum(tensor: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        torch.distributed.all_reduce(tensor)
    return tensor


class _GatherWithGradient(torch.autograd.Function):
    """All-gather equal shards along dim 0; backward sums every worker's gradient for this worker's shard."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = torch.distributed.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad)
        return grad[ctx.rank * ctx.rows: (ctx.rank + 1) * ctx.rows]


def gather(tensor: torch.Tensor, world: int) -> torch.Tensor:
    return _GatherWithGradient.apply(tensor) if world > 1 else tensor


@dataclass
class Objective:
    """Contrastive loss over every worker's passages (+ load balancing), and the in-batch accuracy."""

    criterion: nn.Module
    load_balancing: float
    rank: int = 0
    world: int = 1

    def __call__(self, out: EncoderOutput) -> tuple[torch.Tensor, torch.Tensor]:
        loss, accuracy = self.criterion(out.queries, gather(out.passages, self.world),
                                        offset=self.rank * len(out.queries))
        if out.routing is not None and self.load_balancing > 0:
            loss = loss + self.load_balancing * load_balancing_loss(out.routing)
        return loss, accuracy


@dataclass
class WholeBatchStep:
    """Forward the whole batch; with ``train``, backpropagate (DDP, if any, averages the gradients)."""

    objective: Objective
    device: torch.device
    precision: str

    def __call__(self, model: nn.Module, queries, passages, train: bool):
        with torch.set_grad_enabled(train), autocast(self.device.type, self.precision):
            out = model(queries, passages)
            loss, accuracy = self.objective(out)
        if train:
            loss.backward()
        return out, loss.detach(), accuracy


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _chunks(batch: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    """Row chunks of a token batch, each cut to its own longest text."""
    chunks = []
    for start in range(0, len(batch["input_ids"]), size):
        mask = batch["attention_mask"][start: start + size]
        width = int(mask.sum(dim=1).max())
        chunks.append({"input_ids": batch["input_ids"][start: start + size, :width], "attention_mask": mask[:, :width]})
    return chunks


def average_gradients(model: nn.Module, world: int) -> None:
    """What DDP does after backward, for the cached_gradient route (which bypasses DDP's forward)."""
    if world == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    torch.distributed.all_reduce(flat)
    flat /= world
    for p, part in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(part.view_as(p))


@dataclass
class CachedGradientStep:
    """GradCache: (1) pool every chunk without a graph, (2) run the head and the loss on the pooled
    embeddings and backpropagate to them, (3) re-encode each chunk with a graph and backpropagate its slice
    of those gradients. Each chunk's RNG state is replayed in its second pass, so dropout masks match and
    the gradient is the whole batch's. Validation (``train=False``) is a whole-batch forward."""

    objective: Objective
    device: torch.device
    precision: str
    chunk: int

    def __call__(self, model: nn.Module, queries, passages, train: bool):
        if not train:
            return WholeBatchStep(self.objective, self.device, self.precision)(model, queries, passages, False)
        bare: BiEncoder = getattr(model, "module", model)
        out, loss, accuracy = self.backward(bare, queries, passages)
        average_gradients(bare, self.objective.world)
        return out, loss, accuracy

    def backward(self, model: BiEncoder, queries, passages):
        """Accumulate the whole batch's gradient into ``model``; return output, loss and accuracy."""
        chunks = _chunks(queries, self.chunk) + _chunks(passages, self.chunk)
        states, pooled = [], []
        with torch.no_grad(), autocast(self.device.type, self.precision):
            for chunk in chunks:
                states.append(_rng_state(self.device))
                pooled.append(model.pool(chunk["input_ids"], chunk["attention_mask"]))
        cached = torch.cat(pooled).requires_grad_()
        rows = len(queries["input_ids"])
        with autocast(self.device.type, self.precision):
            embeddings, routing = model.project(cached)
            out = EncoderOutput(embeddings[:rows], embeddings[rows:], routing)
            loss, accuracy = self.objective(out)
        loss.backward()
        after = _rng_state(self.device)
        for chunk, state, grad in zip(chunks, states, cached.grad.split([len(p) for p in pooled])):
            _set_rng_state(state, self.device)
            with autocast(self.device.type, self.precision):
                model.pool(chunk["input_ids"], chunk["attention_mask"]).backward(grad)
        _set_rng_state(after, self.device)
        return out, loss.detach(), accuracy
