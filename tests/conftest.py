"""Shared fixtures: a tiny random BERT with the real MiniLM tokenizer, the data root, a hand-made dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import REPO, make_tiny_bert, write_beir

# Faster feedback: Ray Train V2's controller polls its workers every 2 s by default; a run of tiny epochs
# then mostly waits. Every test process (and the studies they start) inherits these; Train V2 copies
# RAY_TRAIN_* variables to its controller. The preemption watcher only watches cloud nodes.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# No test reaches the Hugging Face hub (the machines are offline): an unknown model fails at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tokenizer():
    from sbmoe_ray.model.backbones import load_tokenizer

    return load_tokenizer("minilm")


@pytest.fixture
def tiny_bert(tokenizer):
    return make_tiny_bert(len(tokenizer))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real BEIR data root: $SBMOE_DATA_DIR, else ../shared/data/beir beside the repository."""
    root = Path(os.environ.get("SBMOE_DATA_DIR", REPO.parent / "shared" / "data" / "beir"))
    if not (root / "adi" / "corpus.jsonl").is_file():
        pytest.skip(f"no BEIR data root at {root} (set SBMOE_DATA_DIR)")
    return root


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    corpus = [{"_id": f"d{i}", "title": f"title {i}", "text": f"document number {i} about topic {i % 3}"}
              for i in range(12)]
    queries = [{"_id": f"q{i}", "text": f"question about topic {i % 3}"} for i in range(6)]
    train = [(f"q{i}", f"d{i}", 1) for i in range(4)] + [("q0", "d5", 0)]
    test = [("q4", "d4", 2), ("q4", "d7", 1), ("q5", "d5", 1), ("q5", "d8", 0)]
    return write_beir(tmp_path / "tiny", corpus, queries, {"train": train, "test": test})
