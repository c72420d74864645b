"""The cheap checks of a training config, run before any expensive work (caches, Ray, training).

A config can be well formed and still fail late: a test set misspelled, a split that does not exist, a
file with a bad byte, a base model that is not on this machine, a loss of another name, a GPU asked of
a machine without one. Each of these is found here, in seconds, with one message naming the key and
what is allowed. One rule is about the science rather than the input: **test data never trains** (nor
chooses), so a training split that is, or shares queries with, a test split is refused, and so is a
zero-shot validation set that is a test set (it chooses the configuration the test then scores).
"""

from __future__ import annotations

import difflib
from pathlib import Path

from sbmoe_ray.errors import ConfigError, DataError
from sbmoe_ray.train.config import DataConfig, TrainConfig


def named_splits(data: DataConfig, where: str) -> list[tuple[str, str, str]]:
    """Every (dataset, split, key) a config reads in full: training, tests, zero-shot validation."""
    out = [(data.train_dataset, data.train_split, f"{where}.train_dataset")]
    out += [(name, data.test_split, f"{where}.test_datasets[{i}]") for i, name in enumerate(data.test_datasets)]
    if data.zero_shot_validation:
        out.append((data.zero_shot_validation, data.zero_shot_validation_split, f"{where}.zero_shot_validation"))
    return out


def load_named(data: DataConfig, where: str) -> dict[str, object]:
    """Every dataset split the config names, read and validated (the reads are cached for the run), by key."""
    from sbmoe_ray.data.beir import load_dataset

    loaded = {}
    for name, split, key in named_splits(data, where):
        try:
            loaded[key] = load_dataset(name, split, data.data_dir)
        except DataError as exc:
            raise DataError(f"{key}={name!r}: {exc}") from None
    return loaded


def check_test_data_never_trains(data: DataConfig, loaded: dict[str, object], where: str) -> None:
    """A test split may not be the training split, share queries with it, or be the zero-shot validation set."""
    train = loaded[f"{where}.train_dataset"]
    zero_shot = loaded.get(f"{where}.zero_shot_validation")
    for key, test in loaded.items():
        if not key.startswith(f"{where}.test_datasets"):
            continue
        for other, role, fix in ((train, "trains", "train on another split or dataset"),
                                 (zero_shot, "chooses the configuration (zero-shot validation)",
                                  "validate zero-shot on another collection or split (e.g. its dev split)")):
            if other is None or other.path.resolve() != test.path.resolve():
                continue
            shared = sorted(set(other.qrels) & set(test.qrels))
            if other.split == test.split or shared:
                what = "is the same split" if other.split == test.split else \
                    f"shares {len(shared)} of its {len(test.qrels)} queries (e.g. {shared[:3]})"
                raise ConfigError(f"{key}={test.name!r} ({test.split}) {what} with the data that {role} "
                                  f"({other.name}, {other.split}): test data must never train or choose; {fix}")


def check_loss(name: str, key: str) -> None:
    from sbmoe_ray.model.losses import LOSSES

    if name not in LOSSES:
        close = difflib.get_close_matches(name, list(LOSSES), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"{key}={name!r}: no such loss; {hint}allowed are {sorted(LOSSES)} (a new loss is one "
                          "class and one entry in sbmoe_ray/model/losses.py)")


def check_base_model(name: str, key: str) -> None:
    from sbmoe_ray.errors import ModelLoadError
    from sbmoe_ray.model.backbones import hidden_size

    try:
        hidden_size(name)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{key}={name!r}: {exc}") from None


def check_trained_layers(k, base_model: str, key: str) -> None:
    """A depth (``optim.trained_layers``, ``finetune.trained_layers``) within the base model's layers."""
    from sbmoe_ray.model.backbones import num_layers
    from sbmoe_ray.model.config import check_depth

    if isinstance(k, int):
        check_depth(k, base_model, num_layers(base_model), key)


def _no_gpu() -> str | None:
    """Why this machine has no GPU for torch (None: it has one)."""
    import torch

    if torch.cuda.is_available():
        return None
    return "a CPU build of torch" if torch.version.cuda is None else "no CUDA device visible"


def check_gpus(use_gpu: bool, key: str) -> None:
    """A local run that asks for GPUs on a machine that has none would wait for them forever."""
    reason = _no_gpu() if use_gpu else None
    if reason:
        raise ConfigError(f"{key}=True: this machine has no GPU for it ({reason}); set {key}: false, or run "
                          "on a machine or Ray cluster with GPUs (--address)")


def check_device(device: str, key: str) -> None:
    """A torch device this machine has (``cuda`` on a CPU build would fail after the data is read)."""
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ConfigError(f"{key}={device!r}: not a torch device; use cpu, cuda or cuda:N") from None
    reason = _no_gpu() if kind == "cuda" else None
    if reason:
        raise ConfigError(f"{key}={device!r}: this machine has no GPU ({reason}); use cpu")


def check_writable(folder: Path, key: str) -> None:
    """``folder`` exists (made if absent) and takes a file."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{key}={str(folder)!r}: not writable ({exc.strerror}); choose a folder you can "
                          "write to") from None


def check_train_config(cfg: TrainConfig, where: str = "config", local: bool = True) -> dict[str, object]:
    """Every cheap check of one training run; returns the loaded datasets by key."""
    loaded = load_named(cfg.data, f"{where}.data")
    check_test_data_never_trains(cfg.data, loaded, f"{where}.data")
    check_loss(cfg.loss.name, f"{where}.loss.name")
    check_base_model(cfg.model.base_model, f"{where}.model.base_model")
    check_trained_layers(cfg.optim.trained_layers, cfg.model.base_model, f"{where}.optim.trained_layers")
    if local:
        check_gpus(cfg.scaling.use_gpu, f"{where}.scaling.use_gpu")
    return loaded
