"""Studies on a multi-node Ray cluster on loopback (Ray's own ``cluster_utils.Cluster``): a worker node is
removed mid-study and the study still finishes, the affected trial resuming from its checkpoint; a storage
path that one node cannot see (that node runs in its own mount namespace) is refused, and so is a worker
that asks for more than any node has."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
from ray.cluster_utils import Cluster

from sbmoe_ray.analysis.records import load_trials
from sbmoe_ray.study.layout import StudyLayout

from helpers import (
    finish,
    free_port,
    held_in_epoch,
    own_ports,
    registered_epoch,
    runs,
    save_tiny_model,
    sweep,
    synthetic_dataset,
    write_study,
)

pytestmark = [pytest.mark.slow, pytest.mark.multinode]


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("multinode")
    return {"model": save_tiny_model(root / "model", tokenizer), "data": synthetic_dataset(root / "data", 88)}


@pytest.fixture
def cluster(tmp_path):
    # The head holds no CPU, so trial drivers and Train workers run on the two worker nodes. The first run stored
    # under tmp_path/studies to start epoch 1 waits there (helpers.HELD_EPOCH_SITE: the nodes' workers inherit the
    # environment they were started in), so its node is removed inside that epoch, not raced.
    with mock.patch.dict(os.environ, held_in_epoch(tmp_path / "site", tmp_path / "studies", 1, tmp_path / "holding")):
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": True,
                                                                "dashboard_host": "127.0.0.1", **own_ports()})
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, workers
    cluster.shutdown()



EPOCHS = 3       # a node dies in epoch 1, after the checkpoint of epoch 0 is registered


def test_a_study_survives_losing_a_worker_node(tmp_path, assets, cluster):
    ray_cluster, workers = cluster
    config = write_study(tmp_path, assets, **{"train.optim.encoder_lr": 1e-4, "train.optim.epochs": EPOCHS,
                                               "proxy.num_trials": 2, "space.num_experts": [2, 3],
                                               "proxy.max_concurrent": 1, "train.scaling.cpus_per_worker": 0.5,
                                               "train.scaling.trainer": "ray_train"})   # a worker group loses a node
    runs_dir = tmp_path / "studies" / "tiny-study" / "proxy" / "runs"
    proc = sweep(config, "--address", ray_cluster.address)
    removed = None
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None and removed is None:
        for progress in runs_dir.glob("*/progress.jsonl") if (tmp_path / "holding").exists() else ():
            events = [json.loads(line) for line in progress.read_text().splitlines()]
            starts = [e for e in events if e["event"] == "epoch_start" and e["epoch"] == 1]
            if starts and registered_epoch(progress.parent) == 0:      # waiting in epoch 1, epoch 0 registered
                node = next(n for n in workers if n.node_id == starts[-1]["node_id"])
                ray_cluster.remove_node(node, allow_graceful=False)      # the node dies mid-epoch
                removed = (progress.parent, node.node_id, registered_epoch(progress.parent))
                break
        time.sleep(0.1)
    output = finish(proc, 600)
    assert removed, "no trial was seen training after a registered checkpoint"
    assert proc.returncode == 0, output[-4000:]

    run_dir, node_id, registered = removed
    events = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    # The run resumes on the surviving node right after the last checkpoint the Train controller had
    # registered when the node died: only the epochs after it run again (normally the one in progress;
    # one more if the node died before the controller's next poll registered a report).
    restart = next(i for i, e in enumerate(events) if e["pid"] != events[0]["pid"])
    assert events[restart]["event"] == "epoch_start" and events[restart]["epoch"] == registered + 1
    assert events[restart]["node_id"] != node_id
    before = [e["epoch"] for e in events[:restart] if e["event"] == "epoch_start"]
    after = [e["epoch"] for e in events[restart:] if e["event"] == "epoch_start"]
    # A loaded machine may see the first restart fail too (the dead node is noticed late): it restarts again from
    # the same checkpoint. Either way no epoch up to the checkpoint runs again, and every later one runs.
    assert before == list(range(len(before))) and min(after) == registered + 1
    assert set(after) == set(range(registered + 1, EPOCHS)) and after[-(EPOCHS - registered - 1):] == list(
        range(registered + 1, EPOCHS))
    assert {e["epoch"] for e in events if e["event"] == "epoch_end"} == set(range(EPOCHS))
    assert len(load_trials(StudyLayout(tmp_path / "studies" / "tiny-study").proxy)) == 2
    trials = [r for r in runs(tmp_path) if r.data.tags.get("sbmoe.kind") == "trial"]
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in runs(tmp_path))


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) for a private mount namespace")
def test_storage_that_a_node_cannot_see_is_refused(tmp_path, assets):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, **own_ports()})
    storage = tmp_path / "studies"
    storage.mkdir()
    # A second node that has its own, empty, /…/studies: what a driver-local folder looks like to it.
    ray_bin = str(Path(sys.executable).with_name("ray"))
    node = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f'mount -t tmpfs tmpfs "{storage}" && exec "{ray_bin}" start --address={cluster.address} '
         f"--num-cpus=1 --dashboard-agent-listen-port={free_port()} --block"], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if not _wait_for_alive_nodes(cluster.address, 2):
            if node.poll() is not None:
                pytest.skip(f"could not start a node in a private mount namespace: {node.stderr.read()[-500:]!r}")
            pytest.fail("the node in its own mount namespace did not join the cluster in 60 s")
        proc = sweep(write_study(tmp_path, assets), "--address", cluster.address)
        output = finish(proc, 300)
        assert proc.returncode == 2, output[-3000:]
        assert "cannot see this folder" in output and "local to the driver's machine" in output, output[-3000:]
        assert not (storage / "tiny-study" / "tune").exists()                # refused before any trial
        # A worker asks for a GPU no node has: refused before any trial (it would stay PENDING for ever).
        gpu = write_study(tmp_path, assets, storage_path=str(tmp_path / "seen"), **{"train.scaling.use_gpu": True})
        proc = sweep(gpu, "--address", cluster.address)
        output = finish(proc, 300)
        assert proc.returncode == 2 and "config.train.scaling.cpus_per_worker=0.5, use_gpu=True: a worker needs 1 " \
            "GPU(s), and no node of the cluster has that many" in output, output[-3000:]
        # Without an address, a local Ray of our own starts, although this cluster is recorded as the
        # machine's current one (plain ray.init() would join it).
        code = ("import ray; from sbmoe_ray.runtime.cluster import init_ray; init_ray(None, 1); "
                "print('GCS', ray.get_runtime_context().gcs_address)")
        local = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                               env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
        assert "GCS " in local.stdout and cluster.address not in local.stdout, local.stderr[-2000:]
    finally:
        with contextlib.suppress(ProcessLookupError):          # a node that never started has no group left
            os.killpg(node.pid, signal.SIGKILL)
        cluster.shutdown()


def _wait_for_alive_nodes(address: str, count: int, timeout: float = 60) -> bool:
    code = ("import ray, sys, time; ray.init(address=sys.argv[1]); deadline = time.time() + float(sys.argv[3])\n"
            "while len([n for n in ray.nodes() if n['Alive']]) < int(sys.argv[2]) and time.time() < deadline:\n"
            "    time.sleep(0.5)\n"
            "sys.exit(0 if len([n for n in ray.nodes() if n['Alive']]) >= int(sys.argv[2]) else 1)")
    return subprocess.run([sys.executable, "-c", code, address, str(count), str(timeout)]).returncode == 0
