"""When fine-tuning stops, and how its learning rate moves on the way: the declared criterion of a run.

A comparison of fine-tuned retrievers means something only if each was trained to convergence (issue 22:
stage 2 compared SB-MoE with plain fine-tuning after 12 AdamW steps, far from it). The loop therefore
validates once per epoch (``optim.max_steps_per_epoch`` makes an "epoch" a round of that many random
batches, the validation interval on a large collection), keeps the best checkpoint by
``run.checkpoint_metric`` and stops on a declared criterion:

* ``optim.patience``: stop after this many validations in a row that did not improve the best value by more
  than ``optim.min_delta`` (early stopping, Prechelt 1998; the best checkpoint, not the last, is tested);
* ``optim.min_delta_se``: the threshold measured, not guessed: an improvement counts only when it exceeds
  this many standard errors of the per-pair difference between this validation and the best one (the same
  held-out pairs scored twice: ``sd(best_i - now_i) / sqrt(n)``), so a change within the validation
  set's own noise does not reset the patience (the tested checkpoint is still the best raw value); the larger
  of the two thresholds applies, and each validation reports it (``val_improve_threshold``, ``val_noise_se``);
* ``optim.epochs``: the cap, reached when the run never stalls.

The learning rate warms up linearly for ``optim.warmup_steps`` optimizer steps, then follows
``optim.schedule`` over the capped run: ``constant``; ``linear`` to zero (BERT, sentence-transformers'
``WarmupLinear``); ``cosine`` to zero (Loshchilov & Hutter 2017). The stopper's state is part of every
checkpoint, so a resumed run stops where the uninterrupted one would have.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

SCHEDULES = ("constant", "linear", "cosine")


def lr_multiplier(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """The factor on each group's learning rate at optimizer step ``step`` (0-based) of ``total``."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


@dataclass
class EarlyStopping:
    """Patience on one validation metric (``mode`` min or max); ``patience`` None never stops early."""

    metric: str
    mode: str
    patience: int | None = None
    min_delta: float = 0.0
    min_delta_se: float = 0.0
    best: float | None = None
    best_epoch: int = -1
    since_best: int = 0
    best_pairs: list[float] | None = None
    threshold: float = 0.0
    noise_se: float = 0.0
    raw_best: float | None = None

    def sets_raw_best(self, metrics: dict[str, Any]) -> bool:
        """Whether these metrics hold the best raw value so far (the checkpoint a run keeps and tests, whatever
        the threshold): what validation's retrieval view is computed for."""
        value = metrics.get(self.metric)
        if value is None or value != value:
            return True
        return self.raw_best is None or (value < self.raw_best if self.mode == "min" else value > self.raw_best)

    def update(self, epoch: int, metrics: dict[str, Any], pairs: list[float] | None = None) -> bool:
        """Record this epoch's validation (``pairs``: the metric of each held-out pair, whose mean is the
        metric, for ``min_delta_se``); True when the run should stop after it."""
        value = metrics.get(self.metric)
        if value is None or value != value:
            return False                                  # no validation this epoch: nothing to judge
        sign = 1.0 if self.mode == "min" else -1.0
        if self.sets_raw_best(metrics):
            self.raw_best = float(value)
        self.noise_se = self.paired_se(pairs)
        self.threshold = max(self.min_delta, self.min_delta_se * self.noise_se)
        if self.best is None or sign * (self.best - value) > self.threshold:
            self.best, self.best_epoch, self.since_best = float(value), epoch, 0
            self.best_pairs = [float(p) for p in pairs] if pairs is not None and self.min_delta_se else None
        else:
            self.since_best += 1
        return self.exhausted

    def paired_se(self, pairs: list[float] | None) -> float:
        """The standard error of the mean per-pair difference between ``pairs`` and the best validation's
        (0 before a best exists or without per-pair values)."""
        if not self.best_pairs or pairs is None or len(pairs) != len(self.best_pairs) or len(pairs) < 2:
            return 0.0
        return statistics.stdev(b - float(p) for b, p in zip(self.best_pairs, pairs)) / math.sqrt(len(pairs))

    @property
    def exhausted(self) -> bool:
        return self.patience is not None and self.since_best >= self.patience

    def reason(self) -> str:
        noise = f" ({self.min_delta_se:g} SE of the paired difference)" if self.min_delta_se else ""
        return (f"{self.metric} did not improve by more than {self.threshold:.4g}{noise} in {self.since_best} "
                f"validations (best {self.best:.4f} at epoch {self.best_epoch + 1})")

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        for key in ("best", "best_epoch", "since_best", "best_pairs", "raw_best"):
            if state and key in state:
                setattr(self, key, state[key])
