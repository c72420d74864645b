"""Sharded encoding over Ray workers: the plan reads every document once; a driver killed mid-encode leaves
whole shards, and a rerun encodes only the missing ones (W = 2 on Cranfield against the single-process
metrics: tests/test_sharded_eval.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from sbmoe_ray.evaluation.checkpoint import LiveEvaluation
from sbmoe_ray.evaluation.dense import EncodeSettings
from sbmoe_ray.evaluation.sharded.encode import plan_shards, read_shard
from sbmoe_ray.model.config import ModelConfig

from helpers import REPO, save_tiny_model, write_beir

DATA = REPO.parent / "shared" / "data" / "beir"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, tokenizer):
    return save_tiny_model(tmp_path_factory.mktemp("shard-model") / "model", tokenizer)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    yield
    ray.shutdown()


def evaluation_for(model_folder) -> LiveEvaluation:
    return LiveEvaluation(ModelConfig(base_model=str(model_folder), num_experts=0, max_length=64),
                          EncodeSettings(batch_size=32, max_length=64, precision="fp32", progress=False))


def test_the_plan_reads_every_document_once_from_byte_offsets(tmp_path):
    corpus = [{"_id": f"d{i}", "title": "t" if i % 2 else "", "text": f"text {i}"} for i in range(10)]
    folder = write_beir(tmp_path / "c", corpus, [{"_id": "q", "text": "x"}], {"test": [("q", "d0", 1)]})
    shards = plan_shards(folder / "corpus.jsonl", 4)
    assert [s["rows"] for s in shards] == [4, 4, 2]
    ids = [i for s in shards for i in read_shard(folder / "corpus.jsonl", s["offset"], s["rows"])[0]]
    assert ids == [f"d{i}" for i in range(10)]
    assert read_shard(folder / "corpus.jsonl", shards[0]["offset"], 2)[1] == ["text 0", "t text 1"]


# The encode driver, held (when given a file to create) once it has reported its second shard: it submits one
# shard at a time (workers=1) and reports each after it is written, so exactly two shards exist and none is in
# flight when the test kills it; it cannot finish first.
ENCODE = """
import pathlib, sys, time
sys.path[:0] = [{tests!r}, {helpers!r}]
from test_sharded_encode import evaluation_for
from sbmoe_ray.evaluation.sharded import encode

if len(sys.argv) > 1:
    def held(*args, **kwargs):
        print(*args, **kwargs)
        if str(args[0]).startswith("[encode] 2/"):
            pathlib.Path(sys.argv[1]).touch()
            while True:
                time.sleep(1)

    encode.print = held
encode.encode_sharded(evaluation_for({model!r}), None, {corpus!r}, {shards!r}, workers=1, shard_rows=100,
                      cpus_per_worker=1.0)
"""


@pytest.mark.slow
def test_a_killed_encode_redoes_only_its_missing_shards(tmp_path, model_folder):
    corpus = [{"_id": f"d{i}", "title": "", "text": " ".join(["word"] * 40) + f" {i}"} for i in range(600)]
    folder = write_beir(tmp_path / "big", corpus, [{"_id": "q", "text": "word"}], {"test": [("q", "d0", 1)]})
    script, holding = tmp_path / "encode.py", tmp_path / "holding"
    script.write_text(ENCODE.format(tests=str(Path(__file__).parent), helpers=str(REPO / "tests"),
                                    model=str(model_folder), corpus=str(folder / "corpus.jsonl"),
                                    shards=str(tmp_path / "shards")))
    proc = subprocess.Popen([sys.executable, str(script), str(holding)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not holding.exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    output, _ = proc.communicate(timeout=60)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shards/*/shard_*.npy")}
    assert holding.exists() and len(before) == 2, output[-2000:]
    assert not list(tmp_path.glob("shards/*/manifest.json"))              # unfinished: no manifest yet
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    after = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shards/*/shard_*.npy")}
    assert len(after) == 6 and all(after[name] == mtime for name, mtime in before.items())
    assert result.stdout.count("[encode]") == 4                           # only the missing shards ran
    manifest = json.loads(next(tmp_path.glob("shards/*/manifest.json")).read_text())
    assert manifest["rows"] == 600
