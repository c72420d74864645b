"""Encoding a corpus in shards over Ray workers: resumable, streaming, and searched shard by shard.

A 5M-document corpus is hours of encoding on one device; a study on a cluster of 8 GPUs should use all
of them. The corpus file is planned into shards of ``shard_rows`` documents (byte offsets of each shard's
first line, one scan of the file); each shard is a Ray task, W at a time, holding one worker's CPUs or one
GPU, that reads its lines from the file (streaming: no process holds the corpus), tokenises and encodes
them, and writes ``shard_NNNNN.npy`` + ``.ids.json`` atomically. The shard folder is keyed by the model's
and the corpus's identity, with a manifest; a shard whose file exists is never encoded again, so an
interrupted encode (a killed worker, a killed driver) redoes only the missing shards, and Ray retries a
task whose worker died. Search reads the shards with :mod:`sbmoe_ray.evaluation.sharded.search`.

Why tasks over shard ranges rather than a Ray Data ``map_batches`` job with an actor pool: the unit of
resume here is a shard file written atomically under a manifest (Tevatron's ``--dataset_shard_index``
layout); Ray Data writes its own block files and cannot resume a half-written output, and its output
rows would have to be joined back to document ids. A task also loads the model once per worker process
(cached), as an actor would.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from sbmoe_ray.data.beir import Document
from sbmoe_ray.evaluation.sharded.search import MANIFEST, ShardedCorpus

PLAN = "plan.json"


def plan_shards(corpus_file: Path, shard_rows: int) -> list[dict[str, Any]]:
    """Shards of ``shard_rows`` non-empty lines: name, byte offset of the first line, and row count."""
    shards, offset, rows, first = [], 0, 0, 0
    with open(corpus_file, "rb") as handle:
        for line in iter(handle.readline, b""):
            if line.strip():
                if rows == 0:
                    first = offset
                rows += 1
                if rows == shard_rows:
                    shards.append({"name": f"shard_{len(shards):05d}", "offset": first, "rows": rows})
                    rows = 0
            offset += len(line)
    if rows:
        shards.append({"name": f"shard_{len(shards):05d}", "offset": first, "rows": rows})
    return shards


def read_shard(corpus_file: Path, offset: int, rows: int) -> tuple[list[str], list[str]]:
    """The ids and BEIR texts (title + text) of ``rows`` documents from ``offset``."""
    ids, texts = [], []
    with open(corpus_file, "rb") as handle:
        handle.seek(offset)
        while len(ids) < rows:
            line = handle.readline()
            if not line:
                break
            if line.strip():
                record = json.loads(line)
                ids.append(str(record["_id"]))
                texts.append(Document(record.get("title") or "", record.get("text") or "").full_text)
    return ids, texts


@functools.lru_cache(maxsize=2)
def _loaded(evaluation_json: str, folder: str | None):
    """The encoder once per worker process (a task of the same model reuses it)."""
    from sbmoe_ray.evaluation.checkpoint import LiveEvaluation
    from sbmoe_ray.evaluation.dense import EncodeSettings
    from sbmoe_ray.model.backbones import load_tokenizer
    from sbmoe_ray.model.config import ModelConfig

    values = json.loads(evaluation_json)
    evaluation = LiveEvaluation(ModelConfig(**values["model"]), EncodeSettings(**values["settings"]))
    model = evaluation.load(Path(folder) if folder else None).to(evaluation.settings.device)
    return model, load_tokenizer(evaluation.model.base_model), evaluation.settings


def encode_shard(evaluation_json: str, folder: str | None, corpus_file: str, shard: dict, out: str,
                 threads: int) -> str:
    """One shard: read, encode, write atomically (the file appears whole or not at all)."""
    import torch

    from sbmoe_ray.evaluation.dense import encode

    torch.set_num_threads(threads)
    model, tokenizer, settings = _loaded(evaluation_json, folder)
    ids, texts = read_shard(Path(corpus_file), shard["offset"], shard["rows"])
    embeddings = encode(model, tokenizer, texts, settings, desc=shard["name"])
    out_dir = Path(out)
    tmp = out_dir / f".{shard['name']}.{os.getpid()}.npy"
    np.save(tmp, embeddings.astype(np.float32))
    (out_dir / f"{shard['name']}.ids.json").write_text(json.dumps(ids))
    tmp.replace(out_dir / f"{shard['name']}.npy")        # last: the .npy marks the shard done
    return shard["name"]


def _encoder(evaluation) -> dict[str, Any]:
    """The model and encode settings a shard task rebuilds the encoder from (progress bars off)."""
    return {"model": asdict(evaluation.model), "settings": {**asdict(evaluation.settings), "progress": False}}


def shard_folder(root: Path, evaluation, folder: Path | None, corpus_file: Path) -> Path:
    """``<root>/<identity hash>``: one folder per (model, weights, settings, corpus file)."""
    stat = corpus_file.stat()
    identity = {**_encoder(evaluation), "weights": str(folder) if folder else None,
                "corpus": [str(corpus_file.resolve()), stat.st_size]}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(root) / digest


def encode_sharded(evaluation, folder: Path | None, corpus_file: Path, root: Path, workers: int,
                   shard_rows: int = 50_000, cpus_per_worker: float = 1.0, use_gpu: bool = False) -> ShardedCorpus:
    """Encode ``corpus_file`` with W Ray workers into shard files under ``root``; resumes what exists."""
    import ray

    from sbmoe_ray.runtime.cluster import init_ray

    corpus_file = Path(corpus_file)
    out = shard_folder(root, evaluation, folder, corpus_file)
    out.mkdir(parents=True, exist_ok=True)
    plan_path = out / PLAN
    if not plan_path.is_file():
        plan_path.write_text(json.dumps(plan_shards(corpus_file, shard_rows)))
    shards = json.loads(plan_path.read_text())
    missing = [s for s in shards if not (out / f"{s['name']}.npy").is_file()]
    if missing:
        init_ray(None, workers * cpus_per_worker + 1)
        payload = json.dumps(_encoder(evaluation), default=str)
        # "DEFAULT": outside the placement group of a Tune trial that calls this (as Ray Train's actors are).
        task = ray.remote(num_cpus=cpus_per_worker, num_gpus=1 if use_gpu else 0, max_retries=2,
                          scheduling_strategy="DEFAULT")(encode_shard)
        _run_tasks(task, payload, str(folder) if folder else None, corpus_file, missing, out, workers,
                   max(1, int(cpus_per_worker)), total=len(shards))
    dim = int(np.load(out / f"{shards[0]['name']}.npy", mmap_mode="r").shape[1])
    manifest = {"dim": dim, "rows": sum(s["rows"] for s in shards),
                "shards": [{"name": s["name"], "rows": s["rows"]} for s in shards]}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return ShardedCorpus(out)


def _run_tasks(task, payload, folder, corpus_file, missing, out, workers, threads, total) -> None:
    """At most ``workers`` shards in flight; one progress line per shard with an estimate of the rest."""
    import ray

    pending, queue, started, done = [], list(missing), time.monotonic(), total - len(missing)
    while queue or pending:
        while queue and len(pending) < workers:
            pending.append(task.remote(payload, folder, str(corpus_file), queue.pop(0), str(out), threads))
        finished, pending = ray.wait(pending, num_returns=1)
        ray.get(finished)
        done += 1
        rate = (time.monotonic() - started) / (done - (total - len(missing)))
        print(f"[encode] {done}/{total} shards; ~{rate * (total - done) / 60:.1f} min left", flush=True)
