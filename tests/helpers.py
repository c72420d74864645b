"""What the tests build: tiny random BERTs and BEIR folders, synthetic datasets, study YAMLs; and how they run a
study (a subprocess of ``sbmoe study``, so that a test can SIGKILL it) and read its MLflow runs."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def make_tiny_bert(vocab_size: int, hidden: int = 32, layers: int = 2, seed: int = 0):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=512)
    return BertModel(config, add_pooling_layer=False).eval()


def write_beir(folder: Path, corpus: list[dict], queries: list[dict], qrels: dict[str, list[tuple[str, str, int]]],
               line_end: str = "\n") -> Path:
    """Write a BEIR-layout dataset; ``qrels`` maps split -> rows."""
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    for split, rows in qrels.items():
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in rows]
        (folder / "qrels" / f"{split}.tsv").write_bytes((line_end.join(lines) + line_end).encode())
    return folder

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


def write_study(tmp_path: Path, assets, **overrides) -> Path:
    """A tiny study YAML (the assets' model and data; stage 1 only unless ``promote`` is set); overrides by
    dotted key (``proxy.num_trials``, ``train.optim.epochs``)."""
    study = {
        "name": "tiny-study", "storage_path": str(tmp_path / "studies"),
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "space": {"base_model": [str(assets["model"])], "num_experts": [0, 2, 3], "top_k": [1, 2],
                  "moe_lr": [1e-3, 1e-2]},
        "proxy": {"num_trials": 4, "max_concurrent": 2, "seed": 0},
        "promote": 0,
        "train": {"model": {"max_length": 32},
                  "data": {"train_dataset": str(assets["data"]), "test_datasets": [str(assets["data"])],
                           "query_max_length": 16, "validation_fraction": 0.2},
                  "optim": {"encoder_lr": 0.0, "epochs": 2, "batch_size": 8},
                  "memory": {"precision": "fp32"},
                  # no dashboard: it costs ~3.5 s of CPU a Ray start, and these studies use no ASHA
                  "scaling": {"num_workers": 1, "cpus_per_worker": 0.5, "dashboard": False}},
    }
    for key, value in overrides.items():          # "section.key" or "train.section.key"
        *parents, leaf = key.split(".")
        target = study
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    if not (tmp_path / "mlflow.db").exists():
        shutil.copyfile(empty_mlflow_store(), tmp_path / "mlflow.db")
    return path


@functools.cache
def empty_mlflow_store() -> Path:
    """An MLflow SQLite store with its schema made (3.6 s of migrations), copied into each tiny study's folder."""
    from mlflow.tracking import MlflowClient

    path = Path(tempfile.mkdtemp(prefix="mlflow-store-")) / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def sweep(config: Path, *extra: str, script: tuple[str, ...] = ("-m", "sbmoe_ray.cli"), **kwargs) -> subprocess.Popen:
    """``sbmoe study --config CONFIG ...`` in a process group of its own (a test may SIGKILL the group), its
    output into a file (``printed``): a pipe nobody reads while a test polls would fill and block the study."""
    import tempfile

    log = tempfile.NamedTemporaryFile("w", prefix="sbmoe-study-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, *script, "study", "--config", str(config), *extra],
                            stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs)
    proc.log = Path(log.name)
    log.close()
    return proc


# A study's driver held after its first finished trial until the test kills or stops it: its Tune loop waits in the
# progress callback, so no further trial is processed and the study cannot finish before the test acts on it.
HELD_DRIVER = """
import pathlib, sys, time
from sbmoe_ray.cli import main
from sbmoe_ray.stages.progress import ProgressCallback

complete = ProgressCallback.on_trial_complete

def held(self, *args, **kwargs):
    complete(self, *args, **kwargs)
    pathlib.Path(sys.argv[1]).touch()
    while True:
        time.sleep(1)

ProgressCallback.on_trial_complete = held
sys.exit(main(sys.argv[2:]))
"""


def held_sweep(config: Path, holding: Path, *extra: str) -> subprocess.Popen:
    """:func:`sweep`, its driver held after the first finished trial (``holding`` is created then)."""
    script = holding.with_name("held_driver.py")
    script.write_text(HELD_DRIVER)
    return sweep(config, *extra, script=(str(script), str(holding)))


# Every process started with this folder on its PYTHONPATH (a study's driver, and Ray's workers, which inherit the
# environment of whoever started Ray) imports this at start-up: once ``sbmoe_ray.train.session`` is loaded, the
# first run whose folder is under $SBMOE_TEST_HOLD_UNDER to start epoch $SBMOE_TEST_HOLD_EPOCH (its previous epoch
# checkpointed) logs the start, creates $SBMOE_TEST_HOLDING and waits there until it is killed; once that file
# exists, no run waits (a restarted one goes on). A test then kills a run inside an epoch without racing it.
HELD_EPOCH_SITE = """
import importlib.abc, importlib.util, os, pathlib, sys, time


def _hold(module):
    log = module.log_progress

    def held(run_dir, event, **values):
        log(run_dir, event, **values)
        holding = pathlib.Path(os.environ["SBMOE_TEST_HOLDING"])
        if (event == "epoch_start" and values.get("epoch") == int(os.environ["SBMOE_TEST_HOLD_EPOCH"])
                and os.environ["SBMOE_TEST_HOLD_UNDER"] in str(pathlib.Path(run_dir).resolve())):
            try:
                holding.touch(exist_ok=False)     # the first run there waits; the others, and restarts, go on
            except FileExistsError:
                return
            while True:
                time.sleep(1)

    module.log_progress = held


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "sbmoe_ray.train.session":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _hold(module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Finder())
"""


def held_in_epoch(folder: Path, under: Path, epoch: int, holding: Path) -> dict[str, str]:
    """An environment in which the first run under ``under`` to start ``epoch`` waits there (see
    ``HELD_EPOCH_SITE``; ``holding`` is created when it does): for a :func:`sweep`, or for starting Ray."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(HELD_EPOCH_SITE)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path,
            "SBMOE_TEST_HOLD_UNDER": str(under.resolve()), "SBMOE_TEST_HOLD_EPOCH": str(epoch),
            "SBMOE_TEST_HOLDING": str(holding)}


def wait_until_held(proc: subprocess.Popen, holding: Path, timeout: float = 400) -> None:
    """Until a held study has finished its first trial; fails with its output if it ended or hung first."""
    deadline = time.monotonic() + timeout
    while not holding.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
            pytest.fail(f"the study ended or hung before its first trial finished:\n{printed(proc)[-4000:]}")
        time.sleep(0.2)


def printed(proc: subprocess.Popen) -> str:
    """What a study started by :func:`sweep` has printed so far."""
    return proc.log.read_text(errors="replace")


def finish(proc: subprocess.Popen, timeout: float) -> str:
    """The study's output once it has ended; past ``timeout`` its process group is killed and the test fails
    with what the study had printed (a hung study then says where it hung)."""
    try:
        proc.wait(timeout=timeout)
        return printed(proc)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        pytest.fail(f"the study ran past {timeout} s; its last output:\n{printed(proc)[-6000:]}")


def runs(tmp_path: Path, experiment: str = "tiny-study"):
    """Every MLflow run of a tiny study's experiment (``tmp_path/mlflow.db``)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], max_results=500)


def proxy_trials(n: int = 8, seeds: int = 2) -> list:
    """Hand-made stage-1 records: a baseline and n SB-MoE configurations of base model ``m``, each over seeds."""
    import random

    from sbmoe_ray.analysis.records import TrialRecord

    rng = random.Random(3)
    records = [TrialRecord(f"b{s}", {"base_model": "m", "num_experts": 0}, "val_loss", {}, [], [], "zero_shot", s)
               for s in range(seeds)]
    for i in range(n):
        params = {"base_model": "m", "num_experts": 3, "top_k": 1, "inference": "all", "moe_lr": 10 ** -(2 + i / n)}
        value = rng.random()
        records += [TrialRecord(f"t{i}s{s}", params, "val_loss", {"val_loss": value + 0.01 * s}, [], [], "cached_head", s)
                    for s in range(seeds)]
    return records


def record(trial_id: str, num_experts: int, scores: dict[str, dict[str, float]], objective: float = float("nan"),
           seed: int = 0, lr: float = 1e-3):
    """A hand-made trial record of base model ``m`` with per-query test nDCG@10 ``scores`` per dataset."""
    from sbmoe_ray.analysis.records import TrialRecord

    test = [{"dataset": d, "metrics": {"ndcg@10": sum(s.values()) / len(s)}, "per_query": {"ndcg@10": s}}
            for d, s in scores.items()]
    params = {"base_model": "m", "num_experts": num_experts}
    if num_experts:
        params.update(top_k=1, inference="top_k", moe_lr=lr)
    return TrialRecord(trial_id, params, "val_loss", {"val_loss": objective}, test, [], "cached_head", seed)


def study(seeds: int = 3, seed: int = 0) -> list:
    """Hand-made stage-1 records on datasets ``a`` and ``b``: a baseline and three configurations (shift 0, 0.05,
    0.2), each replicated over ``seeds`` seeds (a training run of a configuration moves all its queries by one
    seed effect, sd 0.02, and each query by its own, sd 0.05)."""
    import random

    rng = random.Random(seed)
    queries = [f"q{i}" for i in range(40)]
    base = {d: {q: rng.random() for q in queries} for d in ("a", "b")}
    records = [record(f"base-s{s}", 0, base, seed=s) for s in range(seeds)]
    for i, shift in enumerate((0.0, 0.05, 0.2)):
        for s in range(seeds):
            run = shift + rng.gauss(0, 0.02)
            scores = {d: {q: min(1.0, v + run + rng.gauss(0, 0.05)) for q, v in sc.items()} for d, sc in base.items()}
            records.append(record(f"t{i}-s{s}", 3, scores, objective=1.0 - shift + rng.gauss(0, 0.01), seed=s,
                                  lr=10.0 ** -(i + 2)))
    return records


def bad_input_assets(root: Path, tokenizer) -> dict[str, Path]:
    """A tiny model and data, and two broken copies of the data: a Latin-1 byte on line 3 of its test qrels
    (``latin1``), and a test split that judges a training query (``overlap``)."""
    data = synthetic_dataset(root / "data", 88)
    latin = shutil.copytree(data, root / "latin1")
    qrels = latin / "qrels" / "test.tsv"
    lines = qrels.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"\t1", b"\t1\xe9")
    qrels.write_bytes(b"\n".join(lines))
    overlap = shutil.copytree(data, root / "overlap")
    with open(overlap / "qrels" / "test.tsv", "a") as f:
        f.write("q0\td0\t1\n")
    empty_corpus = shutil.copytree(data, root / "empty-corpus")
    (empty_corpus / "corpus.jsonl").write_text("")
    empty_query = shutil.copytree(data, root / "empty-query")
    queries = (empty_query / "queries.jsonl").read_text().splitlines()
    queries[-1] = json.dumps({"_id": json.loads(queries[-1])["_id"], "text": "  "})     # a judged test query
    (empty_query / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (root / "loop").symlink_to(root / "loop")
    (root / "a-file").write_text("not a folder")
    return {"model": save_tiny_model(root / "model", tokenizer), "data": data, "latin1": latin, "overlap": overlap,
            "empty_corpus": empty_corpus, "empty_query": empty_query, "loop": root / "loop", "file": root / "a-file"}


def record_existing_study(config: Path):
    """The study of ``config`` as its first run records it: its identity and config (the code's own functions),
    its MLflow parent and stage runs in the config's store. Returns the resolved StudyConfig."""
    from dataclasses import asdict

    from sbmoe_ray.config import load_config
    from sbmoe_ray.study.config import StudyConfig
    from sbmoe_ray.study.identity import identity
    from sbmoe_ray.tracking import StudyTracker

    study = load_config(StudyConfig, config).resolved()
    study.layout.root.mkdir(parents=True)
    study.layout.fingerprint_file.write_text(json.dumps(identity(study), indent=2))
    study.layout.config_file.write_text(json.dumps(asdict(study), indent=2, default=str))
    tracker = StudyTracker(study.tracking_uri, study.name, study.layout.mlflow_runs_file)
    tracker.start_study({"name": study.name})
    tracker.for_stage("proxy", "stage 1: proxy")
    return study


def trec_qrels(beir_qrels) -> list[str]:
    """A BEIR qrels TSV (header; query, document, relevance) as TREC qrels lines (query 0 document relevance)."""
    return ["{} 0 {} {}".format(*line.split("\t")) for line in open(beir_qrels).read().splitlines()[1:]]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, drawn from 20000-32767: below the kernel's ephemeral range (32768-60999,
    where any outgoing connection may take it before the server binds it) and above Ray's worker ports
    (10002-19999)."""
    import random
    import socket

    while True:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", random.SystemRandom().randint(20000, 32767)))   # not the seeded global
            except OSError:
                continue
            return s.getsockname()[1]


def own_ports() -> dict[str, int]:
    """Head-node arguments (``ray.cluster_utils.Cluster``) that give its dashboard and dashboard agent ports of
    their own: another Ray on the machine (the other test worker's) may hold the defaults 8265 and 52365."""
    return {"dashboard_port": free_port(), "dashboard_agent_listen_port": free_port()}
