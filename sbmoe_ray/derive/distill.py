"""A small base encoder trained at its size: the first layers of a larger one, distilled from its embeddings.

Why: ``minilm-l3`` (the first 3 of MiniLM's 6 layers, nothing trained after the cut) scores 0.076 nDCG@10
zero-shot on SciFact, so "SB-MoE helps a small encoder more" mostly showed that a trained head repairs a
broken encoder (issue 22). The paper's small encoders (TinyBERT, BERT-Small) were trained at their size;
only all-MiniLM-L6-v2 is available offline. This derives one the way DistilBERT and TinyBERT were made (Sanh
et al. 2019; Jiao et al. 2020): a layer cut of the teacher initialises the student, which then learns to
reproduce the teacher's sentence embeddings (MSE between the two pooled, normalised embeddings, as in
Reimers & Gurevych 2020 and sentence-transformers' ``MSELoss``) on texts of the local training collection
(its corpus and its training queries: no test query is seen).

The result is a model folder (weights, tokenizer and the teacher's sentence-transformers files, so pooling,
normalisation and max length carry over) under the derived-models cache, with ``recipe.json``: the recipe,
its content key (recipe, teacher weights and texts) and the distillation's loss curve. ``sbmoe derive``
builds it once; the same recipe on the same files is a cache hit.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RECIPE_FILE = "recipe.json"
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling",
            "2_Normalize")


@dataclass(frozen=True)
class Recipe:
    teacher: str = "minilm"
    layers: int = 3
    dataset: str = "scifact"          # whose corpus and training queries the student learns on
    epochs: int = 3
    lr: float = 1e-4
    batch_size: int = 32
    max_length: int = 256
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{Path(self.teacher).name}-l{self.layers}-distilled"


def training_texts(recipe: Recipe, data_dir: str | None) -> list[str]:
    """The collection's documents and its training queries (never its test queries)."""
    from sbmoe_ray.data.beir import load_dataset

    dataset = load_dataset(recipe.dataset, "train", data_dir)
    return [d.full_text for d in dataset.corpus.values()] + list(dataset.queries.values())


def content_key(recipe: Recipe, texts: list[str], teacher_folder: str) -> str:
    """What the derived model depends on: the recipe, the teacher's weight files and the texts."""
    digest = hashlib.sha256(json.dumps(asdict(recipe), sort_keys=True).encode())
    for weights in sorted(Path(teacher_folder).glob("*.safetensors")) + sorted(Path(teacher_folder).glob("*.bin")):
        digest.update(weights.read_bytes())
    for text in texts:
        digest.update(text.encode())
    return digest.hexdigest()[:16]


def _encoders(recipe: Recipe):
    """The teacher bi-encoder (frozen) and the student: the teacher's first ``layers`` layers, trained."""
    from sbmoe_ray.model.backbones import load_backbone
    from sbmoe_ray.model.bi_encoder import ModelConfig, build_bi_encoder

    config = ModelConfig(base_model=recipe.teacher).resolved()
    teacher = build_bi_encoder(config).eval()
    backbone = load_backbone(recipe.teacher)
    backbone.encoder.layer = backbone.encoder.layer[: recipe.layers]
    backbone.config.num_hidden_layers = recipe.layers
    return teacher, build_bi_encoder(config, backbone=backbone), config


def _embed(model, tokenizer, texts: list[str], max_length: int, precision: str):
    from sbmoe_ray.runtime.precision import autocast

    batch = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with autocast("cpu", precision):
        return model.embed_inputs(inputs)[0].float()


def distill(recipe: Recipe, texts: list[str], precision: str = "fp32", log=print) -> tuple[object, object, list[float]]:
    """Train the student on ``texts`` (autocast to ``precision``); return it, the tokenizer and each epoch's
    mean loss."""
    import torch

    from sbmoe_ray.model.backbones import load_tokenizer

    torch.manual_seed(recipe.seed)
    teacher, student, config = _encoders(recipe)
    tokenizer = load_tokenizer(recipe.teacher)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))          # little padding for the teacher
    with torch.inference_mode():
        targets = torch.empty(len(texts), student.hidden_size)
        for start in range(0, len(order), 64):
            rows = order[start: start + 64]
            targets[rows] = _embed(teacher, tokenizer, [texts[i] for i in rows], recipe.max_length, precision)
    optimizer = torch.optim.AdamW(student.parameters(), lr=recipe.lr)
    losses, rng, started = [], random.Random(recipe.seed), time.monotonic()
    student.train()
    for epoch in range(recipe.epochs):
        shuffled, total = rng.sample(range(len(texts)), len(texts)), 0.0
        for start in range(0, len(shuffled), recipe.batch_size):
            rows = shuffled[start: start + recipe.batch_size]
            loss = torch.nn.functional.mse_loss(
                _embed(student, tokenizer, [texts[i] for i in rows], recipe.max_length, precision), targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
            done, todo = epoch * len(texts) + start + len(rows), recipe.epochs * len(texts)
            if (start // recipe.batch_size) % 50 == 49:
                elapsed = time.monotonic() - started
                log(f"[derive] {done}/{todo} texts, MSE {loss.item():.2e} ({elapsed / 60:.1f} min; "
                    f"~{elapsed / done * (todo - done) / 60:.1f} min left)")
        losses.append(total / len(texts))
        elapsed = time.monotonic() - started
        log(f"[derive] epoch {epoch + 1}/{recipe.epochs}: MSE to the teacher's embeddings {losses[-1]:.2e} "
            f"({elapsed / 60:.1f} min; ~{elapsed / (epoch + 1) * (recipe.epochs - epoch - 1) / 60:.1f} min left)")
    return student.eval(), tokenizer, losses


def save_derived(folder: Path, student, tokenizer, teacher_folder: str, record: dict) -> Path:
    """The student as a model folder with the teacher's sentence-transformers files, written atomically."""
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    student.backbone.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    for name in ST_FILES:
        source = Path(teacher_folder) / name
        if source.is_dir():
            shutil.copytree(source, staging / name)
        elif source.is_file():
            shutil.copy(source, staging / name)
    (staging / RECIPE_FILE).write_text(json.dumps(record, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def derive(recipe: Recipe, data_dir: str | None = None, log=print) -> Path:
    """The derived model's folder: built now, or found in the cache when recipe, teacher and texts match."""
    from sbmoe_ray.model.backbones import derived_folder, resolve_model

    folder, teacher_folder = derived_folder(recipe.name), resolve_model(recipe.teacher).source
    texts = training_texts(recipe, data_dir)
    key = content_key(recipe, texts, teacher_folder)
    if (folder / RECIPE_FILE).is_file() and json.loads((folder / RECIPE_FILE).read_text()).get("key") == key:
        log(f"[derive] {recipe.name}: cached ({folder}, key {key})")
        return folder
    log(f"[derive] {recipe.name}: the first {recipe.layers} layers of {recipe.teacher}, distilled on {len(texts)} "
        f"texts of {recipe.dataset} (corpus + training queries) for {recipe.epochs} epoch(s)")
    from sbmoe_ray.runtime.precision import resolve_precision

    started, precision = time.monotonic(), resolve_precision("auto", "cpu")
    student, tokenizer, losses = distill(recipe, texts, precision, log)
    record = {"recipe": asdict(recipe), "key": key, "texts": len(texts), "mse_per_epoch": losses,
              "precision": precision, "seconds": time.monotonic() - started}
    return save_derived(folder, student, tokenizer, teacher_folder, record)
