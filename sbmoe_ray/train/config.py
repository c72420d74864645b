"""Every setting of a training run, in sections, and the one property that names the training route.

Sections: ``model`` (what is trained, :class:`~sbmoe_ray.model.config.ModelConfig`), ``data`` (what it
learns from and is tested on), ``optim`` (AdamW, epochs, batch), ``loss`` (which loss, temperature, load
balancing), ``memory`` (precision, recomputation, caches), ``scaling`` (Ray Train workers and resources),
``run`` (name, storage, checkpoint selection, the training seed: initialisation, gating noise, batch
order). Each field's own limit is declared next to it; the
``rules`` of a class are its cross-field rules. No torch or Ray is imported here: a bad config answers
in well under a second, before anything starts.

:attr:`TrainConfig.route` decides once how a run trains (Tevatron picks its GradCache trainer the same
way); :mod:`sbmoe_ray.train.launch` builds the inputs, the step and the session from it (:mod:`.routes`):

* ``zero_shot``       frozen encoder, no experts: nothing to train; the base model is evaluated.
* ``cached_head``     frozen encoder: the SB-MoE head trains on cached pooled embeddings (seconds).
* ``cached_layers``   the top k layers trained (``optim.trained_layers: k``) from cached token states of the
                      layer below them, computed once per base model and text (:mod:`sbmoe_ray.model.depth`).
* ``live``            one forward and backward of the whole batch through the encoder (and head).
* ``cached_gradient`` GradCache: the whole batch's loss at the activation memory of a chunk of texts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sbmoe_ray.config import ConfigBase, load_config
from sbmoe_ray.errors import ConfigError
from sbmoe_ray.evaluation.config import EvaluationConfig
from sbmoe_ray.limits import (
    distinct,
    gpu_share,
    non_negative,
    non_negative_int,
    one_of,
    optional,
    path_name,
    positive,
    positive_int,
    setting,
    unit_interval,
)
from sbmoe_ray.model.config import ModelConfig
from sbmoe_ray.runtime.precision import PRECISIONS
from sbmoe_ray.train.stopping import SCHEDULES


def _rules(value) -> str | None:
    from sbmoe_ray.data.beir import IDENTICAL_ID_RULES

    bad = {k: v for k, v in value.items() if v not in IDENTICAL_ID_RULES} if isinstance(value, dict) else value
    return f"a mapping of dataset name to one of {IDENTICAL_ID_RULES}" if bad else None


CHECKPOINT_METRICS = {"val_loss": "min", "val_accuracy": "max", "val_ndcg@10": "max", "train_loss": "min"}
PLACEMENT_STRATEGIES = ("SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK")
ROUTE_NAMES = ("zero_shot", "cached_head", "cached_layers", "live", "cached_gradient")


def _fraction(value) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1
    return None if ok else "allowed range is (0, 1]"


def trained_layers_rule(value) -> str | None:
    """``all`` (every layer and the embeddings: the paper's regime) or k >= 0, the top k Transformer layers."""
    ok = value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)
    return None if ok else "'all' (every layer) or an integer k >= 0 (the top k layers; 0: a frozen encoder)"
RESULTS_FILE = "results.json"          # <run_dir>/results.json: what fit() writes, the run's one results file


@dataclass
class DataConfig(ConfigBase):
    train_dataset: str = "scifact"  # a BEIR name under the data root, or a folder
    train_split: str = "train"  # its qrels/<split>.tsv gives the training pairs
    test_datasets: list[str] = setting(factory=lambda: ["scifact"], check=distinct)  # names or folders
    test_split: str = "test"  # qrels/<split>.tsv of each test set
    data_dir: str | None = None             # default: $SBMOE_DATA_DIR, else ~/.cache/sbmoe/beir
    query_max_length: int = setting(64, positive_int)  # tokens of a query
    # tokens of a training passage (null: model.max_length, as at validation and test): shorter passages make a
    # training step cheaper; what that costs in nDCG: docs/results/2026-12-03-passage-length.md
    train_passage_max_length: int | None = setting(None, optional(positive_int))
    validation_fraction: float = setting(0.05, unit_interval)  # training queries held out
    split_seed: int = setting(0, non_negative_int)  # the validation split (and its retrieval sample): fixed
    #                                       while run.seed varies over a study's replicates
    # Which held-out queries validate: all, or one of two disjoint halves (a two-stage study promotes on the
    # "promotion" half and ranks stage 2 on the "selection" half, so stage 2 is not chosen on the queries
    # that promoted its candidates); training pairs are the same for all three.
    validation_part: str = setting("all", one_of("all", "promotion", "selection"))
    # The share of the training queries a run trains on (all their pairs), drawn by its run.seed: < 1 makes a
    # replicate vary the training sample too, not only the initialisation and the order (Bouthillier et al. 2021)
    train_fraction: float = setting(1.0, lambda v: _fraction(v))
    validation_retrieval_docs: int = setting(0, non_negative_int)  # > 0: each epoch, nDCG@10 of the held-out
    #                                       queries over their positives plus this many random documents
    # A held-out collection (e.g. nfcorpus, its dev split): the best checkpoint's nDCG@10 on it is reported as
    # zs_val_ndcg@10, a second, zero-shot validation objective for a study (never a test set).
    zero_shot_validation: str | None = None
    zero_shot_validation_split: str = "dev"  # its qrels split
    # Per test dataset (by name): drop a retrieved document whose id is the query's? "auto" decides from the
    # data (a query that is a corpus document: same id and same text), "drop" always (BEIR), "keep" never.
    identical_ids: dict[str, str] = setting(factory=dict, check=lambda v: _rules(v))
    # Large zero-shot collections (BEIR names, or "beir-13" for the paper's 13), tested only for what reaches
    # the end of a study (stage 2's chosen configuration and baseline), smallest first, encoded in shards
    # over Ray workers and searched shard by shard (the `evaluation` section); downloaded when absent.
    large_test_datasets: list[str] = setting(factory=list)


@dataclass
class OptimConfig(ConfigBase):
    epochs: int = setting(1, positive_int)            # the cap; early stopping (patience) may end sooner
    # An "epoch" of at most this many random batches: the validation interval on a large collection; smoke runs
    max_steps_per_epoch: int | None = setting(None, optional(positive_int))
    batch_size: int = setting(64, positive_int)     # global: split evenly over the workers
    encoder_lr: float = setting(1e-6, non_negative)  # paper: 1e-6 for the encoder ...
    moe_lr: float = setting(1e-4, non_negative)      # ... and 1e-4 for the SB-MoE block
    freeze_encoder: bool = False                     # also implied by encoder_lr == 0
    # The depth ladder: 'all' trains every layer and the embeddings (the paper's regime); k trains the top k
    # Transformer layers (embeddings and lower layers frozen) from cached states of the layer below them; 0 is
    # a frozen encoder (the head on cached pooled embeddings)
    trained_layers: int | str = setting("all", trained_layers_rule)
    weight_decay: float = setting(0.01, non_negative)  # AdamW's
    warmup_steps: int = setting(0, non_negative_int)    # linear warm-up, in optimizer steps
    schedule: str = setting("constant", one_of(*SCHEDULES))   # after warm-up, over the capped run
    # Stop after this many validations without an improvement of run.checkpoint_metric by > min_delta;
    # null: train every epoch (sbmoe_ray/train/stopping.py)
    patience: int | None = setting(None, optional(positive_int))
    min_delta: float = setting(0.0, non_negative)  # what counts as an improvement
    # ... or, measured: this many standard errors of the per-pair difference from the best validation (the
    # larger threshold applies; val_loss or val_accuracy only)
    min_delta_se: float = setting(0.0, non_negative)
    grad_clip: float = setting(1.0, non_negative)    # max gradient norm; 0 disables clipping
    attention_dropout: float | None = setting(0.0, optional(unit_interval))  # on attention probabilities
    #                                       while training; null keeps the base model's (0.1 for BERT),
    #                                       which is 2x slower on CPU (PyTorch leaves its fused kernel)


@dataclass
class LossConfig(ConfigBase):
    name: str = "in_batch_negatives"       # a key of sbmoe_ray.model.losses.LOSSES (checked by launch.prepare)
    temperature: float = setting(0.05, positive)  # of the in-batch softmax
    load_balancing: float = setting(0.01, non_negative)  # Switch load-balancing coefficient; 0 disables it


@dataclass
class MemoryConfig(ConfigBase):
    precision: str = setting("auto", one_of(*PRECISIONS))  # auto: bf16 where native (GPU, AVX-512 BF16/AMX)
    gradient_checkpointing: bool = False  # recompute each layer in backward
    grad_cache_chunk: int = setting(0, non_negative_int)  # > 0: GradCache, encoding this many texts at a time
    embedding_cache: bool = True            # frozen encoder: train/evaluate from cached pooled embeddings
    cache_dir: str | None = None            # default <run.storage_path>/embedding_cache
    eval_batch_size: int = setting(32, positive_int)  # texts per encoding batch


@dataclass
class ScalingConfig(ConfigBase):
    num_workers: int = setting(2, positive_int)  # data-parallel Ray Train workers
    use_gpu: bool = False  # a GPU per worker, nccl
    # The share of a GPU each worker takes: 1 (a whole GPU), or a fraction so that several trials share one GPU
    # (Ray's fractional GPUs: e.g. 0.25 runs 4 one-worker trials side by side on each GPU; memory is not split)
    gpus_per_worker: float = setting(1.0, gpu_share)
    cpus_per_worker: float = setting(1.0, positive)  # Ray CPUs (threads) each
    placement_strategy: str = setting("SPREAD", one_of(*PLACEMENT_STRATEGIES))  # across nodes
    max_failures: int = setting(1, non_negative_int)  # worker restarts from the last checkpoint
    # auto: one worker trains in the calling process (a Tune trial's own), several on Ray Train; ray_train:
    # always Ray Train (its worker group and controller, e.g. to compare the two)
    trainer: str = setting("auto", one_of("auto", "ray_train"))
    dashboard: bool = True                  # a local Ray's dashboard (with ray[default]); false saves ~0.2 GiB
    #                                         and ~3.5 s of CPU at start (docs/contributing.md, Tests); ASHA needs it

    @property
    def gpus(self) -> float:
        """The GPUs each worker asks Ray for (0 without ``use_gpu``)."""
        return self.gpus_per_worker if self.use_gpu else 0.0

    @property
    def device_type(self) -> str:
        """The kind of device the workers train on: what ``precision: auto`` is resolved for."""
        return "cuda" if self.use_gpu else "cpu"


@dataclass
class RunConfig(ConfigBase):
    name: str = setting("sbmoe-train", path_name)  # the run's folder under storage_path
    storage_path: str = "results/ray"  # checkpoints and results.json
    checkpoint_metric: str = setting("val_loss", one_of(*CHECKPOINT_METRICS))  # picks the tested checkpoint
    seed: int = 0  # initialisation, gating noise, batch order
    # no route line and no per-epoch line (a study's stage-1 trials, seconds each: their stage prints one line a
    # trial); the epochs are in progress.jsonl and results.json all the same
    quiet: bool = False


@dataclass
class TrainConfig(ConfigBase):
    model: ModelConfig = setting(factory=ModelConfig)
    data: DataConfig = setting(factory=DataConfig)
    optim: OptimConfig = setting(factory=OptimConfig)
    loss: LossConfig = setting(factory=LossConfig)
    memory: MemoryConfig = setting(factory=MemoryConfig)
    scaling: ScalingConfig = setting(factory=ScalingConfig)
    evaluation: EvaluationConfig = setting(factory=EvaluationConfig)
    run: RunConfig = setting(factory=RunConfig)

    @property
    def frozen(self) -> bool:
        return self.optim.freeze_encoder or self.optim.encoder_lr == 0 or self.optim.trained_layers == 0

    @property
    def depth(self) -> int | None:
        """How many top Transformer layers train: None for all of them (and the embeddings), 0 when frozen."""
        return 0 if self.frozen else None if self.optim.trained_layers == "all" else int(self.optim.trained_layers)

    @property
    def uses_cache(self) -> bool:
        """A frozen encoder whose pooled embeddings come from the cache (for training and testing)."""
        return self.frozen and self.memory.embedding_cache

    @property
    def route(self) -> str:
        """How this run trains (one of :data:`ROUTE_NAMES`); decided here, once."""
        if self.frozen and self.model.num_experts == 0:
            return "zero_shot"
        if self.uses_cache:
            return "cached_head"
        if self.depth and self.memory.embedding_cache:
            return "cached_layers"
        return "cached_gradient" if self.memory.grad_cache_chunk else "live"

    @property
    def in_process(self) -> bool:
        """Train in the calling process, without Ray Train: nothing to train, or one worker (a Ray Train
        controller and its worker group cost 7-10 s of wall and 11-15 s of CPU to start, for nothing a single
        worker needs: no all-reduce, no placement across nodes)."""
        return self.route == "zero_shot" or (self.scaling.num_workers == 1 and self.scaling.trainer == "auto")

    @property
    def run_dir(self) -> Path:
        return Path(self.run.storage_path) / self.run.name

    @property
    def results_file(self) -> Path:
        return self.run_dir / RESULTS_FILE

    @property
    def cache_dir(self) -> Path:
        """The frozen-encoder embedding cache, shared by every run under the same storage path."""
        return Path(self.memory.cache_dir or Path(self.run.storage_path) / "embedding_cache")

    def validate(self, where: str = "config") -> None:
        self.model.validate(f"{where}.model")
        super().validate(where)

    def rules(self, where: str) -> None:
        o = self.optim
        if o.moe_lr == 0 and self.model.num_experts > 0:
            raise ConfigError(f"{where}.optim.moe_lr=0: the SB-MoE block would never train; use a value > 0")
        if o.batch_size < 2:
            raise ConfigError(f"{where}.optim.batch_size={o.batch_size}: the in-batch loss needs >= 2 pairs a batch "
                              "(each query's negatives are the other pairs' passages); use 16 or more")
        if o.batch_size < 8:
            warn_once(f"{where}.optim.batch_size={o.batch_size}: legal, but each query sees only {o.batch_size - 1} "
                      "in-batch negative(s); the paper trains at 64")
        if o.batch_size % self.scaling.num_workers:
            raise ConfigError(f"{where}.optim.batch_size={o.batch_size}: must be a multiple of "
                              f"scaling.num_workers={self.scaling.num_workers} (each worker takes an equal shard)")
        if o.min_delta_se and self.run.checkpoint_metric not in ("val_loss", "val_accuracy"):
            raise ConfigError(f"{where}.optim.min_delta_se={o.min_delta_se:g}: measured on held-out pairs, so "
                              f"run.checkpoint_metric must be val_loss or val_accuracy, not "
                              f"{self.run.checkpoint_metric!r}; set min_delta_se=0 or change the metric")
        if self.run.checkpoint_metric == "val_ndcg@10" and not self.data.validation_retrieval_docs:
            raise ConfigError(f"{where}.run.checkpoint_metric='val_ndcg@10': needs data.validation_retrieval_docs > 0")
        overlap = sorted(set(self.data.large_test_datasets) & set(self.data.test_datasets))
        if overlap:
            raise ConfigError(f"{where}.data.large_test_datasets={self.data.large_test_datasets}: {overlap} also in "
                              "data.test_datasets; name each collection in one of the two lists")
        if self.memory.grad_cache_chunk and self.depth is not None and not self.frozen:
            raise ConfigError(f"{where}.memory.grad_cache_chunk={self.memory.grad_cache_chunk}: not with "
                              f"optim.trained_layers={self.optim.trained_layers} (GradCache re-encodes token "
                              "batches; the top layers train from cached states); set one of them back")
        if self.memory.grad_cache_chunk and self.frozen:
            raise ConfigError(f"{where}.memory.grad_cache_chunk={self.memory.grad_cache_chunk}: needs a trained "
                              "encoder (optim.encoder_lr > 0); a frozen encoder keeps no activations to save")


_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """A legal but unusual value: said once per process on stderr (a config is validated again in every trial)."""
    import sys

    if message not in _WARNED:
        _WARNED.add(message)
        print(f"sbmoe: warning: {message}", file=sys.stderr)


def load_train_config(path: Path, overrides: list[str] = ()) -> TrainConfig:
    """A TrainConfig from a YAML file plus ``key=value`` overrides; errors name ``file:line`` and the key."""
    return load_config(TrainConfig, path, overrides)
