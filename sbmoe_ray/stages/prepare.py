"""Before stage 1, after the cheap checks (:mod:`sbmoe_ray.stages.checks`): the embedding caches, then the
study's record (its identity and config, written when it begins).

Nothing here starts Ray. The default study's caches take minutes to build the first time (each corpus
encoded once per base model family, shared by every study under the same storage path).
"""

from __future__ import annotations

import json
from dataclasses import asdict

from sbmoe_ray.study.config import StudyConfig
from sbmoe_ray.train.config import TrainConfig


def prepare_study(study: StudyConfig, identity: dict) -> None:
    """The embedding caches (after :func:`sbmoe_ray.stages.checks.check_study`), then the study's identity
    and config, written once when the study begins (a resume keeps the record of its first run, or adds the
    package versions ``--allow-new-versions`` accepted)."""
    from sbmoe_ray.train import prepare

    stage, examples = study.proxy_stage(), []
    for base_model in study.space["base_model"]:
        params = {"base_model": base_model, "num_experts": max(study.space["num_experts"]), "top_k": 1}
        examples.append(stage.trial_config(params, "prepare"))
    fill_shared_caches(examples)
    if study.promote:
        build_state_caches(study)                    # with stage 1's pooled embeddings, one pass per text list
    for example in examples:
        prepare(example, where="config.train")       # datasets, splits, and the embedding cache
    layout = study.layout
    layout.fingerprint_file.write_text(json.dumps(identity, indent=2))      # as it was, or with accepted versions
    if not layout.config_file.is_file():
        layout.config_file.write_text(json.dumps(asdict(study), indent=2, default=str))


def build_state_caches(study: StudyConfig) -> None:
    """Stage 2 at depth k: the token states below its trained layers, for the training set and every test set,
    built here once (before any trial: concurrent trials would each build them) and shared by every trial, arm,
    seed and later study under the storage path."""
    from sbmoe_ray.data.beir import load_dataset
    from sbmoe_ray.evaluation.state_cache import dataset_states
    from sbmoe_ray.train import resolved
    from sbmoe_ray.train.inputs import embedding_cache, state_cache

    stage, proxy = study.finetune_stage(), study.proxy_stage()
    for base_model in study.space["base_model"]:
        cfg = resolved(stage.trial_config({"base_model": base_model, "num_experts": 0}, "prepare"))
        if cfg.route != "cached_layers":
            return
        frozen = resolved(proxy.trial_config({"base_model": base_model, "num_experts": 0}, "prepare"))
        pooled = embedding_cache(frozen) if frozen.uses_cache else None
        data, tests = cfg.data, study.train.data.test_datasets
        names = [(data.train_dataset, data.train_split)] + [(n, data.test_split) for n in tests]
        cache = state_cache(cfg)
        for name, split in names:
            dataset_states(cache, load_dataset(name, split, data.data_dir), data.query_max_length, pooled)


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
