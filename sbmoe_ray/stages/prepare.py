"""Before any work: every check that can fail cheaply, the study's definition recorded, then the caches.

Nothing here starts Ray. A study folder that is not writable, a resumed study whose search differs, a
missing dataset, split or model, an unknown loss: each answers in one message before the embedding
caches are built (minutes for the default study's corpora) and before stage 1 starts.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from sbmoe_ray.errors import ConfigError
from sbmoe_ray.study.config import StudyConfig
from sbmoe_ray.train.config import TrainConfig


def check_writable(study: StudyConfig) -> None:
    folder = study.layout.root
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"config.storage_path={study.storage_path!r}: not writable ({exc.strerror}); "
                          "choose a folder you can write to") from None


def check_fingerprint(study: StudyConfig, resume: bool) -> dict:
    """The study's fingerprint, refused if a study of this name exists with another search."""
    path, current = study.layout.fingerprint_file, json.loads(json.dumps(study.fingerprint()))
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != current:
            flat = lambda d: {**d.get("space", {}), "objective": d.get("objective")}     # noqa: E731
            changed = sorted(k for k, v in flat(current).items() if flat(saved).get(k) != v)
            raise ConfigError(f"config.name={study.name!r}: a study of that name exists in {study.layout.root} with a "
                              f"different search space ({', '.join(changed)} differ); pick another name, or "
                              "restore its settings to resume it")
    elif resume:
        raise ConfigError(f"--resume: no study named {study.name!r} in {study.layout.root.parent}")
    return current


def prepare_study(study: StudyConfig, resume: bool = False) -> None:
    """Every check that can fail cheaply, then the embedding caches; the study's fingerprint and config
    are written last (a refused study writes nothing)."""
    from sbmoe_ray.model.backbones import hidden_size
    from sbmoe_ray.train import prepare

    check_writable(study)
    fingerprint = check_fingerprint(study, resume)
    locate_large_collections(study)
    stage, examples = study.proxy_stage(), []
    for base_model in study.space["base_model"]:
        hidden_size(base_model)                       # clear error for an unknown or unreachable model
        params = {"base_model": base_model, "num_experts": max(study.space["num_experts"]), "top_k": 1}
        examples.append(stage.trial_config(params, "prepare"))
    fill_shared_caches(examples)
    for example in examples:
        prepare(example)                              # datasets, splits, and the embedding cache
    study.layout.fingerprint_file.write_text(json.dumps(fingerprint, indent=2))
    study.layout.config_file.write_text(json.dumps(asdict(study), indent=2, default=str))


def locate_large_collections(study: StudyConfig) -> None:
    """The large test collections are found (downloaded when absent) before any work: an offline machine
    without them fails now, not after stage 2."""
    from sbmoe_ray.data.collections import expand_names
    from sbmoe_ray.data.root import locate_dataset

    for name in expand_names(study.train.data.large_test_datasets):
        print(f"[prepare] large test collection {name}: {locate_dataset(name, study.train.data.data_dir)}", flush=True)


def fill_shared_caches(configs: list[TrainConfig]) -> None:
    """Base models that are layer prefixes of one another (``minilm-l3`` of ``minilm``) share one forward
    pass per text list: their cache entries are filled together before each model's own preparation."""
    from sbmoe_ray.data.beir import load_dataset
    from sbmoe_ray.evaluation.embedding_cache import fill_family, prefix_families
    from sbmoe_ray.train import resolved
    from sbmoe_ray.train.inputs import embedding_cache

    configs = [resolved(c) for c in configs if c.uses_cache]
    families = prefix_families([embedding_cache(c) for c in configs])
    if not families:
        return
    data = configs[0].data
    names = [(data.train_dataset, data.train_split)] + [(n, data.test_split) for n in data.test_datasets]
    for family in families:
        for name, split in names:
            ds = load_dataset(name, split, data.data_dir)
            fill_family(family, [d.full_text for d in ds.corpus.values()], family[0].config.max_length,
                        f"{ds.name} corpus")
            fill_family(family, list(ds.queries.values()), data.query_max_length, f"{ds.name} queries")


def load_study(study_dir: Path) -> StudyConfig:
    """The config a study ran with (``sbmoe report``)."""
    from sbmoe_ray.study.layout import StudyLayout

    path = StudyLayout(Path(study_dir)).config_file
    if not path.is_file():
        raise ConfigError(f"{study_dir}: not a study folder (no {path.name})")
    return StudyConfig.from_dict(json.loads(path.read_text()), where=str(path))
