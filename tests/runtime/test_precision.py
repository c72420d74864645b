"""Precision: ``auto`` follows the hardware (CPU flags injected), an explicit bf16 without native support
warns, and what a run stores and keys its embedding cache with is the resolved value."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from sbmoe_ray.evaluation.dense import EncodeSettings
from sbmoe_ray.evaluation.embedding_cache import PooledEmbeddingCache
from sbmoe_ray.model.bi_encoder import ModelConfig
from sbmoe_ray.runtime.precision import native_bf16, resolve_precision
from sbmoe_ray.train import TrainConfig, prepare

from helpers import save_tiny_model, synthetic_dataset, with_settings

AVX2_ONLY = frozenset({"avx", "avx2", "fma"})
AVX512_BF16 = frozenset({"avx2", "avx512f", "avx512_bf16"})
AMX = frozenset({"avx2", "avx512f", "amx_tile", "amx_bf16"})


@pytest.mark.parametrize("flags,expected", [(AVX2_ONLY, "fp32"), (AVX512_BF16, "bf16"), (AMX, "bf16"),
                                            (frozenset(), "fp32")])
def test_auto_is_bf16_only_where_the_cpu_has_it_natively(flags, expected):
    assert resolve_precision("auto", "cpu", flags) == expected
    assert native_bf16("cpu", flags) == (expected == "bf16")


def test_explicit_precisions_are_kept_and_bf16_without_native_support_warns():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("fp32", "cpu", AMX) == "fp32"
        assert resolve_precision("bf16", "cpu", AMX) == "bf16"
    with pytest.warns(RuntimeWarning, match=r"50x slower than fp32"):
        assert resolve_precision("bf16", "cpu", AVX2_ONLY) == "bf16"


def test_a_run_stores_the_resolved_precision_and_the_cache_keys_on_it(tmp_path, tokenizer, monkeypatch):
    from sbmoe_ray.runtime import precision

    model = save_tiny_model(tmp_path / "m", tokenizer)
    data = synthetic_dataset(tmp_path / "d", 24)
    cfg = with_settings(TrainConfig(model=ModelConfig(base_model=str(model), num_experts=2, max_length=16)),
                        train_dataset=str(data), test_datasets=[], encoder_lr=0.0, batch_size=4,
                        storage_path=str(tmp_path / "s"), num_workers=1)
    assert cfg.memory.precision == "auto"
    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX2_ONLY)
    on_avx2, _ = prepare(cfg, quiet=True)
    monkeypatch.setattr(precision, "cpu_flags", lambda: AMX)
    on_amx, _ = prepare(cfg, quiet=True)
    assert (on_avx2.memory.precision, on_amx.memory.precision) == ("fp32", "bf16")
    texts = ["a text", "another text"]
    keys = {p: PooledEmbeddingCache(tmp_path / "c", on_amx.model, EncodeSettings(precision=p)).key(texts, 16)
            for p in ("fp32", "bf16")}
    assert keys["fp32"] != keys["bf16"]
    # prepare() filled the cache under the resolved precision's key: both entries exist, one per precision.
    entries = sorted(p.stem for p in (tmp_path / "s" / "embedding_cache").rglob("*.npy"))
    for resolved in (on_avx2, on_amx):
        key = PooledEmbeddingCache(resolved.cache_dir, resolved.model,
                                   EncodeSettings(precision=resolved.memory.precision)).key(
            [t for t in _queries(data)], resolved.data.query_max_length)
        assert key in entries
    assert np.load(next((tmp_path / "s" / "embedding_cache").rglob("*.npy"))).dtype == np.float32


def _queries(folder):
    from sbmoe_ray.data.beir import load_dataset

    return list(load_dataset(str(folder), "train").queries.values())


def test_a_onednn_isa_cap_below_avx512_bf16_makes_bf16_not_native_and_the_quick_start_one_seed(monkeypatch):
    from sbmoe_ray.study.stage import FinetuneConfig

    flags = frozenset({"avx2", "avx512_bf16", "amx_bf16"})
    assert native_bf16("cpu", flags) and resolve_precision("auto", "cpu", flags) == "bf16"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")          # how the README emulates an AVX2-only CPU
    assert not native_bf16("cpu", flags) and resolve_precision("auto", "cpu", flags) == "fp32"
    policy = FinetuneConfig(seeds={"native_bf16": 2, "otherwise": 1})          # the quick start's
    assert policy.replicates()[0] == 1 and FinetuneConfig(seeds=3).replicates() == (3, "set")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert native_bf16("cpu", flags)
