"""Every cheap check of a study, in one place, before the budget forecast, the caches or Ray.

In order: the study's identity against the one on disk (:mod:`sbmoe_ray.study.identity`: a re-run with
changed settings is refused before anything is written), ``--resume`` of a study that does not exist,
the tracking store, a writable study folder, every dataset named anywhere (read and validated; a test
split never trains, :mod:`sbmoe_ray.train.checks`), the large collections located with their split, the
loss, every base model (offline: one fast error), and GPUs a local run asks for. A refused run leaves
no folder it created behind.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

from sbmoe_ray.errors import ConfigError, DataError, SbmoeError
from sbmoe_ray.study.config import StudyConfig
from sbmoe_ray.study.identity import check_identity
from sbmoe_ray.train import checks


def check_study(study: StudyConfig, resume: bool = False, local: bool = True,
                allow_new_versions: bool = False) -> dict | None:
    """The identity to record once the study's preparation succeeds, or None when the study is complete (its
    identity matches, and there is nothing to check or run); raises on the first problem found."""
    layout = study.layout
    saved = json.loads(layout.fingerprint_file.read_text()) if layout.fingerprint_file.is_file() else None
    identity = check_identity(study, saved, allow_new_versions)
    if saved is None and resume:
        raise ConfigError(f"--resume: no study named {study.name!r} in {layout.root.parent}; run it without "
                          "--resume to start it")
    if saved is not None and layout.completed_file.is_file():
        return None
    from sbmoe_ray.tracking import check_tracking_uri

    check_tracking_uri(study.tracking_uri)
    if layout.root.exists() and not layout.root.is_dir():
        raise ConfigError(f"config.name={study.name!r}: {layout.root} is a file, not a study folder; give the study "
                          "another name (--set name=...)")
    with removed_if_refused(layout.root):
        checks.check_writable(layout.root, "config.storage_path")
        check_inputs(study, local)
    return identity


def check_inputs(study: StudyConfig, local: bool) -> None:
    data, where = study.train.data, "config.train.data"
    loaded = checks.load_named(data, where)
    checks.check_test_data_never_trains(data, loaded, where)
    check_large_collections(study)
    checks.check_loss(study.train.loss.name, "config.train.loss.name")
    for i, base_model in enumerate(study.space["base_model"]):
        checks.check_base_model(base_model, f"config.space.base_model[{i}]")
        if study.promote:
            checks.check_trained_layers(study.finetune.trained_layers, base_model, "config.finetune.trained_layers")
    if local:
        checks.check_gpus(study.train.scaling.use_gpu, "config.train.scaling.use_gpu")
        if study.promote:
            checks.check_gpus(study.finetune.use_gpu, "config.finetune.use_gpu")
        check_local_cpus(study)


def check_local_cpus(study: StudyConfig) -> None:
    """A trial's CPUs (workers x CPUs each) within this machine's cores: more would never be scheduled."""
    import os

    cores = len(os.sched_getaffinity(0))
    sections = [("train.scaling", study.train.scaling.num_workers, study.train.scaling.cpus_per_worker)]
    if study.promote:
        sections.append(("finetune", study.finetune.num_workers, study.finetune.cpus_per_worker))
    for where, workers, cpus in sections:
        if workers * cpus > cores:
            raise ConfigError(f"config.{where}.num_workers={workers} x cpus_per_worker={cpus:g}: a trial would ask "
                              f"for {workers * cpus:g} CPUs on this machine of {cores} cores; ask for at most {cores} "
                              "(or run on a cluster: --address)")


def check_large_collections(study: StudyConfig) -> None:
    """Each large test collection found (downloaded when absent) with its test split: an offline machine
    without them fails now, not after stage 2. Their corpora are read only by the test phase."""
    from sbmoe_ray.data.beir import available_splits
    from sbmoe_ray.data.collections import TEST_SPLIT, expand_names
    from sbmoe_ray.data.root import locate_dataset

    for i, name in enumerate(expand_names(study.train.data.large_test_datasets)):
        key = f"config.train.data.large_test_datasets[{i}]"
        try:
            path = locate_dataset(name, study.train.data.data_dir)
        except DataError as exc:
            raise DataError(f"{key}={name!r}: {exc}") from None
        split = TEST_SPLIT.get(path.name, "test")
        if not (path / "qrels" / f"{split}.tsv").is_file() or not (path / "queries.jsonl").is_file():
            raise DataError(f"{key}={name!r}: {path} lacks queries.jsonl or qrels/{split}.tsv (has splits "
                            f"{available_splits(path) or 'none'})")
        print(f"[prepare] large test collection {name}: {path}", flush=True)


@contextmanager
def removed_if_refused(path: Path):
    """The folders of ``path`` that did not exist on entry are removed again when the body raises a
    :class:`SbmoeError` (a refused study leaves no empty study folder, nor its parents)."""
    first_new = next((p for p in [path, *path.parents][::-1] if not p.exists()), None)
    try:
        yield
    except SbmoeError:
        if first_new is not None:
            shutil.rmtree(first_new, ignore_errors=True)
        raise
