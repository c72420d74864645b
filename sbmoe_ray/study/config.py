"""What a study is: its name and storage, the search space (:mod:`sbmoe_ray.study.space`), the training
template every trial starts from (``train``), and its two stages: ``proxy`` (stage 1: the search with a
frozen encoder) and ``finetune`` (stage 2: the ``promote`` best configurations and controls fine-tuned).

The default study (the preset ``experts_sweep``) trains the SB-MoE head of a frozen MiniLM and of its
3-layer cut on cached embeddings of SciFact train, seconds a trial. Optuna optimises ``proxy.objective``, a
validation metric of the training dataset's held-out split, never a test metric. Each stage's trials see
one :class:`StageConfig`. Nothing here imports torch, Ray or Optuna: a bad study config is refused in
well under a second.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sbmoe_ray.config import ConfigBase
from sbmoe_ray.data.root import data_root, dataset_name
from sbmoe_ray.errors import ConfigError
from sbmoe_ray.limits import non_negative_int, optional, path_name, setting
from sbmoe_ray.study.claims import ClaimsConfig
from sbmoe_ray.study.layout import StudyLayout
from sbmoe_ray.study.points import CONFIRM_OFFSET
from sbmoe_ray.study.policy import per_hardware, resolve
from sbmoe_ray.study.space import PARAMS, apply, default_space
from sbmoe_ray.study.stage import FinetuneConfig, ProxyConfig, StageConfig
from sbmoe_ray.train.config import CHECKPOINT_METRICS, TrainConfig

# Keys of older study configs, and where they live now.
MOVED = {"base_models": "space.base_model", "num_experts": "space.num_experts", "top_k": "space.top_k",
         "top_k_max": "space.top_k", "inference": "space.inference", "moe_lr": "space.moe_lr", "search": "proxy"}


def default_train() -> TrainConfig:
    """The default study trains the SB-MoE head of a frozen MiniLM on cached embeddings (seconds a trial)."""
    from sbmoe_ray.train.config import DataConfig, OptimConfig, ScalingConfig

    return TrainConfig(data=DataConfig(test_datasets=["scifact", "nfcorpus", "cran", "cisi"]),
                       optim=OptimConfig(encoder_lr=0.0, epochs=6, batch_size=64),
                       scaling=ScalingConfig(num_workers=1, cpus_per_worker=1.0))


def _minutes(value: Any) -> str | None:
    return None if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else \
        "a positive number of minutes"


_BUDGET = optional(per_hardware(_minutes, "{native_bf16: 45, otherwise: 90}"))


@dataclass
class StudyConfig(ConfigBase):
    MOVED = MOVED
    name: str = setting("experts-sweep", path_name)  # the study's folder under storage_path, its MLflow experiment
    storage_path: str = "results/studies"  # studies, checkpoints, embedding caches (on a cluster: shared)
    # $MLFLOW_TRACKING_URI (a cluster head exports its server's), else the embedded store
    tracking_uri: str = setting(factory=lambda: os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    space: dict[str, Any] = setting(factory=default_space)  # the search space (guides/search-space.md)
    proxy: ProxyConfig = setting(factory=ProxyConfig)
    train: TrainConfig = setting(factory=default_train)
    promote: int = setting(2, non_negative_int)        # per base model fine-tuned in stage 2; 0 = the proxy only
    finetune: FinetuneConfig = setting(factory=FinetuneConfig)
    # Minutes for the whole command; stage 2 is planned to fit (sbmoe_ray/stages/budget.py): a number, one per
    # kind of hardware (sbmoe_ray/study/policy.py), or null (no plan: stage 2 as configured)
    budget_minutes: float | dict | None = setting(None, _BUDGET)
    analysis: ClaimsConfig = setting(factory=ClaimsConfig)   # what the answer may claim (sbmoe_ray/study/claims.py)

    def depth_label(self, base_model: str | None = None) -> str:
        """How deep stage 2 fine-tunes, as the report, summary.json, MLflow and the terminal name it:
        ``fine-tuned: top 1 of 6 layers`` (the layer count read from the first base model's config)."""
        from sbmoe_ray.errors import ModelLoadError
        from sbmoe_ray.model.backbones import num_layers
        from sbmoe_ray.model.config import depth_label

        k = self.finetune.trained_layers
        try:
            total = num_layers(str(base_model or self.space["base_model"][0]))
        except ModelLoadError:           # a report rebuilt where the base model is not: the depth alone
            total = None
        return f"fine-tuned: {depth_label(None if k == 'all' else k, total)}"

    def budget_seconds(self) -> float | None:
        """The budget in seconds for this machine (None: no budget)."""
        minutes = resolve(self.budget_minutes, self.finetune.device)[0]
        return None if minutes is None else 60.0 * float(minutes)

    @property
    def layout(self) -> StudyLayout:
        return StudyLayout(Path(self.storage_path).resolve() / self.name)

    @property
    def cache_dir(self) -> Path:
        """The frozen-encoder embedding cache, shared by every study under the same storage path."""
        return Path(self.train.memory.cache_dir or Path(self.storage_path) / "embedding_cache").resolve()

    @property
    def primary_test_sets(self) -> list[str]:
        """The collections the primary claim averages over: ``analysis.primary.test_sets``, else every test set but
        the training collection (its in-domain result is secondary), else every test set."""
        if self.analysis.primary.test_sets:
            return list(self.analysis.primary.test_sets)
        zero_shot = [d for d in self.final_test_names if d != dataset_name(self.train.data.train_dataset)]
        return zero_shot or list(self.final_test_names)

    @property
    def test_names(self) -> list[str]:
        """The test datasets as results name them."""
        return [dataset_name(d) for d in self.train.data.test_datasets]

    @property
    def final_test_names(self) -> list[str]:
        """What the end of a study (stage 2's chosen configurations and baselines) is tested on: the test
        datasets, then the large collections, smallest first."""
        from sbmoe_ray.data.collections import expand_names

        return self.test_names + [dataset_name(d) for d in expand_names(self.train.data.large_test_datasets)]

    @property
    def proxy_objectives(self) -> dict[str, str]:
        """What Optuna optimises, by the name trials report it under: the validation objective, and the
        zero-shot validation nDCG@10 (maximised) when ``train.data.zero_shot_validation`` names a set."""
        return {"objective": CHECKPOINT_METRICS[self.proxy.objective],
                **({"zs_objective": "max"} if self.train.data.zero_shot_validation else {})}

    def fingerprint(self) -> dict[str, Any]:
        """What defines the search: a study resumed under the same name must keep it."""
        return {"space": {p.name: self.space[p.name] for p in PARAMS}, "objective": self.proxy.objective,
                "seeds": self.proxy.seeds, "zero_shot_validation": self.train.data.zero_shot_validation}

    def budget(self) -> dict[str, int]:
        """What stage 1 spends, as its report states it."""
        return {"configurations_planned": self.proxy.num_trials, "seeds": self.proxy.seeds,
                "epochs": self.train.optim.epochs}

    def resolved(self) -> StudyConfig:
        """A copy with every path absolute, taken in the driver: trials run in their own trial folder (Tune
        sets it as their working directory), where a relative path would name another place."""
        study = replace(self, storage_path=str(Path(self.storage_path).resolve()))
        uri = study.tracking_uri
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
        data_dir = str(data_root(study.train.data.data_dir).resolve())
        train = replace(study.train, data=replace(study.train.data, data_dir=data_dir),
                        memory=replace(study.train.memory, cache_dir=str(study.cache_dir)))
        return replace(study, train=train, tracking_uri=uri)

    def _half(self, train: TrainConfig, part: str) -> TrainConfig:
        """With a stage 2, each stage validates on its own half of the held-out queries: stage 2 is not
        ranked on the queries that promoted its candidates."""
        return replace(train, data=replace(train.data, validation_part=part)) if self.promote else train

    def proxy_stage(self) -> StageConfig:
        """Stage 1 as its trials see it: the train template (validated on the promotion half of the held-out
        queries when there is a stage 2), ranked by ``proxy.objective``."""
        train = self._half(self.train, "promotion")
        return StageConfig("proxy", str(self.layout.proxy.folder), replace(train, run=replace(train.run, quiet=True)),
                           self.proxy.objective, self.proxy.asha, str(self.cache_dir))

    def finetune_stage(self) -> StageConfig:
        """Stage 2 as its trials see it: the train template with the encoder trained (``finetune.encoder_lr``)
        on ``finetune.num_workers`` Ray Train workers, ranked by ``finetune.objective`` on the selection half
        of the held-out queries; no test sets while
        training (the chosen configurations are tested afterwards)."""
        ft, train = self.finetune, self._half(self.train, "selection")
        optim = replace(train.optim, encoder_lr=ft.lr_grid[0], freeze_encoder=False, epochs=ft.epochs,
                        patience=ft.patience, min_delta=ft.min_delta,
                        min_delta_se=ft.min_delta_se, warmup_steps=ft.warmup_steps,
                        schedule=ft.schedule, trained_layers=ft.trained_layers)
        cfg = replace(train, optim=optim,
                      data=replace(train.data, test_datasets=[], large_test_datasets=[], zero_shot_validation=None,
                                   validation_retrieval_docs=ft.validation_retrieval_docs),
                      scaling=replace(train.scaling, num_workers=ft.num_workers, cpus_per_worker=ft.cpus_per_worker,
                                      use_gpu=ft.use_gpu, gpus_per_worker=ft.gpus_per_worker),
                      run=replace(train.run, checkpoint_metric=ft.objective))
        return StageConfig("finetune", str(self.layout.finetune.folder), cfg, ft.objective, False, str(self.cache_dir))

    def confirm_stage(self) -> StageConfig:
        """Stage 2's confirmation as its trials see it: stage 2's settings, its own folder; its trials are the
        replicates ``CONFIRM_OFFSET + i`` (seeds never used for selection: :mod:`sbmoe_ray.stages.confirm`), each on
        ``finetune.confirm_train_fraction`` of the training queries, drawn by its seed."""
        stage = self.finetune_stage()
        data = replace(stage.train.data, train_fraction=self.finetune.confirm_train_fraction)
        train = replace(stage.train, data=data)
        return replace(stage, name="confirm", folder=str(self.layout.confirm.folder), train=train)

    def rules(self, where: str) -> None:
        self.space = {**default_space(), **{k: _numbers(v) for k, v in self.space.items()}}
        unknown = sorted(set(self.space) - {p.name for p in PARAMS})
        if unknown:
            raise ConfigError(f"{where}.space.{unknown[0]}={self.space[unknown[0]]!r}: unknown search parameter; "
                              f"allowed are {[p.name for p in PARAMS]} (add one in sbmoe_ray/study/space.py)")
        for param in PARAMS:
            problem = param.check(self.space[param.name], self.space)
            if problem:
                raise ConfigError(f"{where}.space.{param.name}={self.space[param.name]!r}: {problem}")
        if self.proxy.asha and self.proxy.seeds > 1:
            raise ConfigError(f"{where}.proxy.asha=True: not with proxy.seeds={self.proxy.seeds} (Ray Tune's "
                              "Repeater averages whole replicates; early stopping would cut some short); set "
                              "proxy.asha: false, or proxy.seeds: 1")
        if self.proxy.asha and not self.train.scaling.dashboard:
            raise ConfigError(f"{where}.train.scaling.dashboard=False: not with proxy.asha=True (a trial ASHA stops "
                              "frees its Ray Train placement group through the dashboard; without it the next trial "
                              "hangs); set train.scaling.dashboard: true")
        if not self.train.data.test_datasets:
            raise ConfigError(f"{where}.train.data.test_datasets=[]: a study with nothing to test has no answer; name "
                              "at least one test collection (e.g. [scifact])")
        declared = self.analysis.primary.test_sets
        if declared and set(declared) - set(self.final_test_names):
            wrong = sorted(set(declared) - set(self.final_test_names))[0]
            raise ConfigError(f"{where}.analysis.primary.test_sets={declared}: {wrong!r} is not a test set of this "
                              f"study; allowed are {self.final_test_names} (train.data.test_datasets)")
        if not self.train.data.validation_fraction:
            raise ConfigError(f"{where}.train.data.validation_fraction=0: the stages rank configurations by "
                              f"proxy.objective={self.proxy.objective!r} on held-out training queries; hold some out "
                              "(e.g. 0.2)")
        if self.proxy.objective == "val_ndcg@10" and not self.train.data.validation_retrieval_docs:
            raise ConfigError(f"{where}.proxy.objective='val_ndcg@10': needs train.data.validation_retrieval_docs > 0")
        # The template must be valid for the largest head the space asks for.
        example = {"num_experts": max(self.space["num_experts"]), "top_k": 1}
        apply(self.train, example).validate(f"{where}.train")
        large = self.train.data.large_test_datasets
        if large and not self.promote:
            raise ConfigError(f"{where}.train.data.large_test_datasets={large}: tested at the end of stage 2 only "
                              "(its chosen configurations and baselines); set promote >= 1, or test a checkpoint "
                              "with `sbmoe evaluate --sharded`")
        if self.promote:
            bases, drawn = len(self.space["base_model"]), self.finetune.controls
            offered = (self.proxy.num_trials - bases) // bases - drawn   # searched SB-MoE configurations each
            if self.promote > offered:
                raise ConfigError(f"{where}.promote={self.promote}: more than stage 1 offers: proxy.num_trials="
                                  f"{self.proxy.num_trials} over {bases} base model(s), less their baselines and "
                                  f"{drawn} control(s) drawn from the space, is {offered} searched configuration(s) "
                                  f"each; raise proxy.num_trials to >= {bases * (1 + self.promote + drawn)}, or "
                                  f"lower promote (or finetune.controls) to fit")
            if self.finetune.replicates()[0] >= CONFIRM_OFFSET:
                raise ConfigError(f"{where}.finetune.seeds={self.finetune.replicates()[0]}: must be < {CONFIRM_OFFSET} "
                                  "(the confirmation's fresh seeds start there); use fewer seeds")
            if self.finetune.objective == "val_ndcg@10" and not self.finetune.validation_retrieval_docs:
                raise ConfigError(f"{where}.finetune.objective='val_ndcg@10': needs "
                                  "finetune.validation_retrieval_docs > 0")
            try:
                apply(self.finetune_stage().train, example).validate(f"{where}.train")
            except ConfigError as exc:
                raise ConfigError(f"{where}.finetune: stage 2 (the train template with the finetune settings) is "
                                  f"invalid: {exc}; change finetune.* or train.*") from None


def _numbers(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` as a string: numeric strings in a space value become numbers."""
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, str) and any(c in value for c in ".eE"):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_study(study_dir: Path) -> StudyConfig:
    """The config a study ran with, read from its folder (``sbmoe report``, ``sbmoe ui``)."""
    import json

    path = StudyLayout(Path(study_dir)).config_file
    if not path.is_file():
        raise ConfigError(f"{study_dir}: not a study folder (no {path.name})")
    return StudyConfig.from_dict(json.loads(path.read_text()), where=str(path))
