"""The two stages of a study, as their config sections and as their trials see them.

``proxy`` (stage 1) searches the space with a frozen encoder, seconds a trial; ``finetune`` (stage 2)
fine-tunes the ``promote`` best configurations, some controls and plain fine-tuning with their encoder on
Ray Train workers. Each stage's trials see one :class:`StageConfig`: the training template, where the trials
write, how they are ranked (:meth:`sbmoe_ray.study.config.StudyConfig.proxy_stage` and ``finetune_stage``
build them). Nothing here imports torch or Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sbmoe_ray.config import ConfigBase
from sbmoe_ray.limits import (
    gpu_share,
    int_range,
    non_negative,
    non_negative_int,
    one_of,
    optional,
    positive,
    positive_int,
    setting,
)
from sbmoe_ray.study.arms import ARMS, DEFAULT
from sbmoe_ray.study.policy import per_hardware, resolve
from sbmoe_ray.study.space import apply
from sbmoe_ray.train.config import CHECKPOINT_METRICS, TrainConfig, trained_layers_rule
from sbmoe_ray.train.stopping import SCHEDULES

OBJECTIVES = ("val_loss", "val_accuracy", "val_ndcg@10")
MAX_CONFIRM_SEEDS = 100     # fresh seeds of each confirmed arm (they count from CONFIRM_OFFSET, below the next)


def _arms(value) -> str | None:
    ok = isinstance(value, list) and all(v in ARMS for v in value) and len(set(value)) == len(value)
    return None if ok else f"a list of distinct values from {list(ARMS)} ([] for none)"


_SEEDS = per_hardware(positive_int, "{native_bf16: 2, otherwise: 1}")


@dataclass
class ProxyConfig(ConfigBase):
    """Stage 1, the proxy: how the search runs (Optuna TPE inside Ray Tune)."""
    num_trials: int = setting(24, positive_int)       # configurations, including the enqueued baselines
    seeds: int = setting(1, positive_int)              # replicates of each configuration (other training seeds)
    max_concurrent: int = setting(1, positive_int)  # trials at a time
    asha: bool = False                                 # early stopping on the per-epoch objective
    asha_grace_epochs: int = setting(1, positive_int)  # epochs before ASHA may stop a trial
    objective: str = setting("val_loss", one_of(*OBJECTIVES))   # a validation metric, never a test metric
    seed: int = setting(0, non_negative_int)  # the sampler's seed (TPE, the drawn controls)


def _learning_rates(value) -> str | None:
    ok = (isinstance(value, list) and value and len(set(value)) == len(value)
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1 for v in value))
    return None if ok else "a non-empty list of distinct learning rates in (0, 1)"


@dataclass
class FinetuneConfig(ConfigBase):
    """Stage 2: the promoted configurations fine-tuned with their encoder on Ray Train workers."""
    # Per base model, configurations drawn from the space (run in stage 1 too): with the 2 promoted, 6, the fewest
    # where the proxy check's exact p can go below 0.05 for an imperfect ordering (sbmoe_ray/analysis/agreement.py)
    controls: int = setting(4, non_negative_int)
    # Attribution controls of the top configuration, trained and tested beside the chosen one: a gain is
    # credited to the experts only when it survives against the dense adapter (sbmoe_ray/stages/promotion.py)
    attribution: list[str] = setting(factory=lambda: list(DEFAULT), check=lambda v: _arms(v))
    # Replicates of each stage-2 configuration: a number, or one per kind of hardware (sbmoe_ray/study/policy.py)
    seeds: int | dict = setting(2, _SEEDS)
    # After stage 2 chooses, its choice, the baseline and the attribution controls trained again on this many
    # fresh seeds (never used for selection), and only those tested; 0: the selection replicates are tested
    confirm_seeds: int = setting(3, int_range(0, MAX_CONFIRM_SEEDS))
    # Each confirmation replicate trains on this share of the training queries, drawn by its seed (the same draw
    # for every arm's replicate i): a confirmation seed then varies the training sample as a method claim does,
    # not only the initialisation and the order (Bouthillier et al., MLSys 2021); 1: every query
    confirm_train_fraction: float = setting(0.9, lambda v: None if isinstance(v, (int, float)) and not isinstance(
        v, bool) and 0 < v <= 1 else "allowed range is (0, 1]")
    encoder_lr: float = setting(2e-5, positive)       # the head keeps its promoted moe_lr
    # Every arm tuned alike: each promoted SB-MoE configuration and plain fine-tuning are trained at each of these
    # encoder learning rates (null: [encoder_lr]); the drawn controls at the first; the attribution controls at
    # the chosen configuration's own (sbmoe_ray/stages/promotion.py)
    encoder_lrs: list[float] | None = setting(None, optional(_learning_rates))
    # The depth every arm of stage 2 trains at (part of the study's identity): 'all' (every layer and the
    # embeddings, the paper's regime) or k, the top k layers from cached states of the layer below
    # (sbmoe_ray/model/depth.py); the same on every machine, so the answer does not depend on it
    trained_layers: int | str = setting("all", trained_layers_rule)
    # Plain fine-tuning gets as many candidates as SB-MoE (promote x len(encoder_lrs) + controls): the shared
    # grid first, then rates between and beyond it (half-decade steps); a number sets the count instead
    baseline_configs: int | None = setting(None, optional(positive_int))
    # Trained to convergence: validated every epoch, stopped after `patience` epochs without improving the
    # objective, at most `epochs`; the best checkpoint is tested (sbmoe_ray/train/stopping.py)
    epochs: int = setting(8, positive_int)
    patience: int | None = setting(2, optional(positive_int))  # validations without improvement
    min_delta: float = setting(0.0, non_negative)     # an improvement smaller than this is none (the objective's units)
    # ... measured: an improvement within this many standard errors of the per-pair difference from the best
    # validation (the held-out pairs scored twice) is none (val_loss or val_accuracy; the larger applies)
    min_delta_se: float = setting(0.0, non_negative)
    warmup_steps: int = setting(0, non_negative_int)  # linear warm-up, optimizer steps
    schedule: str = setting("constant", one_of(*SCHEDULES))  # after warm-up, to 0 at the cap
    objective: str = setting("val_loss", one_of(*OBJECTIVES))   # ranks stage 2 (validation, never test)
    validation_retrieval_docs: int = setting(500, non_negative_int)   # val_ndcg@10: positives + this many docs
    num_workers: int = setting(2, positive_int)       # data-parallel Ray Train workers per trial
    cpus_per_worker: float = setting(1.0, positive)  # CPUs of each worker
    use_gpu: bool = False  # a GPU under each worker (nccl)
    gpus_per_worker: float = setting(1.0, gpu_share)   # a fraction: several trials share one GPU (see train.scaling)
    max_concurrent: int = setting(1, positive_int)  # stage-2 trials at a time

    @property
    def device(self) -> str:
        """Where stage 2 trains: what a value per kind of hardware is resolved for."""
        return "cuda" if self.use_gpu else "cpu"

    @property
    def lr_grid(self) -> list[float]:
        """The encoder learning rates every arm is trained at (``encoder_lrs``, else ``[encoder_lr]``)."""
        return list(self.encoder_lrs or [self.encoder_lr])

    def sbmoe_candidates(self, promote: int) -> int:
        """How many SB-MoE configurations stage 2 chooses among: each promoted one at each rate, the controls."""
        return promote * len(self.lr_grid) + self.controls

    def baseline_lrs(self, candidates: int) -> list[float]:
        """Plain fine-tuning's encoder learning rates: ``baseline_configs`` of them (else ``candidates``, the
        SB-MoE configurations stage 2 chooses among): the shared grid first, then the geometric midpoints between
        its rates, then half-decade steps beyond its ends (up, then down), so that neither arm is tuned more."""
        n, grid = self.baseline_configs or max(1, candidates), sorted(self.lr_grid)
        extra = [(a * b) ** 0.5 for a, b in zip(grid, grid[1:])]
        extra += [f for i in range(1, n + 1) for f in (grid[-1] * 10 ** (i / 2), grid[0] * 10 ** (-i / 2))]
        rates = [float(f"{r:.3g}") for r in self.lr_grid + extra]
        return list(dict.fromkeys(rates))[:n]

    def replicates(self) -> tuple[int, str]:
        """The seeds for this machine and why."""
        seeds, why = resolve(self.seeds, self.device)
        return int(seeds), why


@dataclass
class StageConfig(ConfigBase):
    """One stage as its trials see it: the training template, where its trials write, how it ranks them."""
    name: str = "proxy"                    # proxy (stage 1), finetune (stage 2) or confirm (its fresh seeds)
    folder: str = ""                       # <study>/<name>: its tune/ and runs/
    train: TrainConfig = setting(factory=TrainConfig)
    objective: str = setting("val_loss", one_of(*OBJECTIVES))
    asha: bool = False                     # trials report every epoch to Tune (ASHA decides on them)
    cache_dir: str = ""                    # the embedding cache of the study's storage path

    @property
    def mode(self) -> str:
        return CHECKPOINT_METRICS[self.objective]

    def trial_config(self, params: dict[str, Any], trial_id: str, replicate: int = 0) -> TrainConfig:
        """The TrainConfig of one trial: the template plus the trial's parameters; replicate r of a
        configuration trains with seed ``train.run.seed + r`` (its validation split stays fixed)."""
        cfg = apply(self.train, params)
        return replace(cfg, run=replace(cfg.run, name=trial_id, storage_path=str(Path(self.folder) / "runs"),
                                        seed=self.train.run.seed + replicate),
                       memory=replace(cfg.memory, cache_dir=self.cache_dir or cfg.memory.cache_dir))
