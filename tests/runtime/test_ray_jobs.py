"""A study submitted as a Ray job (``ray job submit --working-dir . -- sbmoe study ...``), Ray's recommended
way to run on a cluster and what KubeRay's RayJob does: against a real ``ray start --head`` with token
authentication on and the dashboard on 127.0.0.1. The job's driver runs on the cluster; a job stopped
mid-study is resumed by submitting it again; a relative storage path (the job's temporary working copy)
is refused before anything is written; a client without the token is refused."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers import HELD_DRIVER, free_port, runs, save_tiny_model, synthetic_dataset, write_study

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")


HEAD_PORTS = ("port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
              "runtime-env-agent-port", "ray-client-server-port", "node-manager-port", "object-manager-port")


def start_head(temp: str, env: dict) -> tuple[subprocess.Popen, str] | tuple[None, str]:
    """One ``ray start --head --block`` on ports of its own, waited for until it takes a job; (head, address),
    or (None, its log's tail) when it died. Every port is chosen: another Ray on the machine (a test's ray.init,
    or the other xdist worker's copy of this fixture) holds the defaults, and a dashboard agent that cannot
    bind 52365 never takes a job ("No available agent to submit job")."""
    dashboard = free_port()
    log = Path(temp) / f"head-{dashboard}.log"
    head = subprocess.Popen([RAY, "start", "--head", "--block", *(f"--{name}={free_port()}" for name in HEAD_PORTS),
                             "--num-cpus=2", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                             "--disable-usage-stats", "--temp-dir", temp],
                            env=env, start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{dashboard}"
    # Ready when a job runs: the dashboard answers `ray job list` before its job agent is up, seconds later on a
    # loaded machine.
    deadline = time.monotonic() + 180
    while (tried := subprocess.run([RAY, "job", "submit", "--address", address, "--", "true"], env=env,
                                   capture_output=True, text=True)).returncode:
        if head.poll() is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)               # what it had started
            return None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"ray start --head did not take a job: {tried.stderr[-1500:]}"
        time.sleep(2)
    return head, address


@pytest.fixture(scope="module")
def cluster():
    """``ray start --head --block`` as a user starts it, with its own temp dir, token auth on; stopped with
    SIGTERM to that one process (``ray stop`` would stop every Ray on the machine, other tests' too). A head
    that dies while starting (seen once in CI beside the other worker's Rays; its cause unknown, its output
    was not kept then) is started again on other ports, twice at most; its log is in the failure."""
    temp = tempfile.mkdtemp(prefix="rjob", dir="/tmp")        # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    logs = []
    head = None
    try:
        for _ in range(3):
            head, address = start_head(temp, env)
            if head:
                break
            logs.append(address)
        assert head, "ray start --head died three times; its logs:\n" + "\n---\n".join(logs)
        yield address, env
    finally:
        if head:
            head.send_signal(signal.SIGTERM)
            try:
                head.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def job_dir(tmp_path, tokenizer):
    """The folder a user submits (``--working-dir``): the study's YAML; the study itself writes to absolute
    paths under ``tmp_path`` (the storage every node would mount)."""
    assets = {"model": save_tiny_model(tmp_path / "model", tokenizer), "data": synthetic_dataset(tmp_path / "data", 88)}
    config = write_study(tmp_path, assets, **{"proxy.num_trials": 4, "proxy.max_concurrent": 1})
    folder = tmp_path / "submitted"
    folder.mkdir()
    shutil.copy(config, folder / "study.yaml")
    return folder


def ray_job(cluster, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    address, env = cluster
    return subprocess.run([RAY, "job", *args[:1], "--address", address, *args[1:]], env=env, capture_output=True,
                          text=True, timeout=timeout)


def submit(cluster, job_dir: Path, *study_args: str, job_id: str | None = None) -> subprocess.CompletedProcess:
    """``ray job submit --working-dir DIR -- sbmoe study --config study.yaml ...``; waits for the job unless it
    is given a submission id to follow."""
    waiting = ["--no-wait", "--submission-id", job_id] if job_id else []
    return ray_job(cluster, "submit", *waiting, "--working-dir", str(job_dir), "--",
                   "sbmoe", "study", "--config", "study.yaml", *study_args)


def test_a_study_submitted_as_a_ray_job_runs_on_the_cluster_and_resumes_when_submitted_again(cluster, job_dir):
    tmp_path = job_dir.parent
    finished = tmp_path / "studies" / "tiny-study" / "proxy" / "finished"
    job_id, holding = f"sbmoe-{secrets.token_hex(4)}", tmp_path / "holding"
    (job_dir / "held_driver.py").write_text(HELD_DRIVER)
    first = ray_job(cluster, "submit", "--no-wait", "--submission-id", job_id, "--working-dir", str(job_dir), "--",
                    "python", "held_driver.py", str(holding), "study", "--config", "study.yaml")
    assert first.returncode == 0, first.stderr
    deadline = time.monotonic() + 240
    while not holding.exists():    # the driver waits after its first finished trial (helpers.HELD_DRIVER)
        assert time.monotonic() < deadline, ray_job(cluster, "logs", job_id).stdout[-4000:]
        time.sleep(0.5)
    assert ray_job(cluster, "stop", job_id).returncode == 0
    kept = {p.name: p.stat().st_mtime_ns for p in finished.iterdir()}
    assert 1 <= len(kept) < 4

    again = submit(cluster, job_dir)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-2000:]
    assert "Connecting to existing Ray cluster" in again.stdout           # the driver joined the cluster
    done = {p.name: p.stat().st_mtime_ns for p in finished.iterdir()}
    assert len(done) == 4 and all(done[name] == mtime for name, mtime in kept.items())   # not trained again
    found = runs(tmp_path)
    trials = [r for r in found if r.data.tags.get("sbmoe.stage") == "proxy" and "sbmoe.group" in r.data.tags]
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)
    assert all(r.info.status == "FINISHED" for r in found)

    third = submit(cluster, job_dir)
    assert third.returncode == 0 and "is complete" in third.stdout


def test_a_ray_job_with_a_relative_storage_path_is_refused_before_it_writes(cluster, job_dir):
    refused = submit(cluster, job_dir, "--set", "storage_path=results/studies", "--set", "name=elsewhere")
    assert refused.returncode != 0
    assert "config.storage_path='results/studies': a relative path in a Ray job" in refused.stdout
    assert not (job_dir.parent / "studies" / "elsewhere").exists()


def test_a_client_without_the_clusters_token_is_refused(cluster):
    address, env = cluster
    listed = subprocess.run([RAY, "job", "list", "--address", address], env={**env, "RAY_AUTH_TOKEN": "0" * 32},
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode != 0 and "Invalid authentication token" in listed.stdout + listed.stderr
