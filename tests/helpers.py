"""Tiny model folders and a synthetic BEIR dataset for training tests."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import make_tiny_bert, write_beir

SEARCH_ORDER = ("run", "data", "optim", "memory", "scaling", "model", "loss", "evaluation")


def save_tiny_model(folder: Path, tokenizer, seed: int = 0) -> Path:
    """A 2-layer H=32 BERT without dropout (so runs are comparable across worker counts), saved as a folder."""
    model = make_tiny_bert(len(tokenizer), seed=seed)
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def synthetic_dataset(folder: Path, num_queries: int = 48) -> Path:
    """Queries that share a topic word with their positive document; train and test splits."""
    topics = ["protein", "galaxy", "river", "engine", "poetry", "vaccine", "market", "glacier"]
    corpus = [{"_id": f"d{i}", "title": topics[i % 8], "text": f"{topics[i % 8]} report number {i}"}
              for i in range(num_queries)]
    queries = [{"_id": f"q{i}", "text": f"what about {topics[i % 8]} {i}"} for i in range(num_queries)]
    train = [(f"q{i}", f"d{i}", 1) for i in range(num_queries - 8)]
    test = [(f"q{i}", f"d{i}", 1) for i in range(num_queries - 8, num_queries)]
    return write_beir(folder, corpus, queries, {"train": train, "test": test})


def registered_epoch(run_dir: Path) -> int | None:
    """The epoch of the latest checkpoint Ray Train's controller has registered (it polls every 2 s)."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return None
    return ((snapshot.get("latest_checkpoint_result") or {}).get("metrics") or {}).get("epoch")


def with_settings(cfg, **settings):
    """``cfg`` with settings given by their field name (``encoder_lr=0.0``), wherever their section is
    (``name`` is the run's; give the loss's by replacing ``cfg.loss``)."""
    from dataclasses import fields, replace

    sections = {}
    for key, value in settings.items():
        section = next(s for s in SEARCH_ORDER if key in {g.name for g in fields(getattr(cfg, s))})
        sections.setdefault(section, {})[key] = value
    return replace(cfg, **{name: replace(getattr(cfg, name), **values) for name, values in sections.items()})
