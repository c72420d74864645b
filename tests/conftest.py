"""Shared fixtures: a tiny random BERT with the real MiniLM tokenizer, the data root, a hand-made dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import REPO, make_tiny_bert, write_beir

# Every test process (and the studies they start) inherits these; Train V2 copies RAY_TRAIN_* variables to
# its controller. The preemption watcher only watches cloud nodes. (The controller's poll interval is the
# package's own: sbmoe_ray.train.launch.POLL_INTERVAL_S.)
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# No test reaches the Hugging Face hub (the machines are offline): an unknown model fails at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# The longest tests first (the whole suite on 2 xdist workers, 2-core AMD EPYC, 2026-12-06: the two-stage study
# 133 s, the node loss 110 s, the Ray Job 81 s, the DDP equivalence 75 s, then 62 s to 34 s). Under
# `--dist loadscope --no-loadscope-reorder` (Makefile, and WHOLE_MODULES below) pytest-xdist hands each worker two
# units to start with and one more whenever it is down to two tests: the long ones start first.
HEAVIEST = ("test_a_two_stage_study", "test_a_study_survives_losing_a_worker_node", "test_a_study_submitted_as_a_ray_job",
            "test_two_workers_with_ddp", "test_a_signal_stops_a_study", "test_a_killed_study_with_seeds",
            "test_killed_worker_resumes", "test_a_killed_encode_redoes",
            "test_storage_that_a_node_cannot_see")


# Modules whose module-scoped fixture takes seconds (a local Ray; a `ray start --head`): pytest tears a module
# fixture down whenever the next test a worker runs is another module's, so handed out test by test they were set
# up again and again (a suite on 2 workers, 2026-12-06: 6 local Rays for test_train.py, 2 heads for
# test_ray_jobs.py, ~75 s of repeated setups and teardowns). Under `--dist loadscope` (Makefile) each of them
# goes whole to one worker; every other test is a unit of its own, handed out as workers free up (xdist's own
# loadscope would group every module, and `--dist loadgroup` ignores xdist_group marks with pytest 9.2:
# docs/stack-notes.md).
WHOLE_MODULES = ("tests/train/test_train.py", "tests/runtime/test_ray_jobs.py")


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class WholeModules(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in WHOLE_MODULES else nodeid

    return WholeModules(config, log)


def pytest_collection_modifyitems(items):
    """The heaviest studies first, then the other slow tests, then the rest (stable otherwise): spread over
    pytest-xdist workers, the long ones then overlap instead of one of them finishing alone at the end."""
    def order(item) -> tuple[int, int]:
        heavy = [i for i, name in enumerate(HEAVIEST) if item.name.startswith(name)]
        return (0, heavy[0]) if heavy else (1 if item.get_closest_marker("slow") else 2, 0)

    items.sort(key=order)


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


# `SBMOE_TEST_CPU=1 pytest ...`: each test's wall time and the whole machine's CPU time while it ran (Ray's
# processes are not pytest's children, so pytest's own CPU time misses most of a study's work).
_CPU_REPORT: list[tuple[str, float, float]] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not os.environ.get("SBMOE_TEST_CPU"):
        return (yield)
    import time

    import psutil

    def busy() -> float:
        times = psutil.cpu_times()
        return times.user + times.nice + times.system       # Ray's worker processes run niced

    start, cpu = time.monotonic(), busy()
    try:
        return (yield)
    finally:
        _CPU_REPORT.append((item.nodeid, time.monotonic() - start, busy() - cpu))
        if os.environ.get("SBMOE_TEST_TIMELINE"):           # under pytest-xdist: which worker ran what, when
            with open(os.environ["SBMOE_TEST_TIMELINE"], "a") as f:
                f.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}\t{time.time() - (time.monotonic() - start):.1f}"
                        f"\t{time.time():.1f}\t{item.nodeid}\n")


def pytest_terminal_summary(terminalreporter):
    if _CPU_REPORT:
        terminalreporter.section("wall and machine CPU seconds per test (SBMOE_TEST_CPU)")
        for nodeid, wall, cpu in sorted(_CPU_REPORT, key=lambda r: -r[2])[:20]:
            terminalreporter.write_line(f"{wall:7.1f} s wall {cpu:7.1f} s CPU  {nodeid}")
        wall, cpu = sum(r[1] for r in _CPU_REPORT), sum(r[2] for r in _CPU_REPORT)
        terminalreporter.write_line(f"{wall:7.1f} s wall {cpu:7.1f} s CPU  all {len(_CPU_REPORT)} tests")
