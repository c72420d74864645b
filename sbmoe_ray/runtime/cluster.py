"""Ray clusters: connecting (local, ``--address``, ``$RAY_ADDRESS``) and checking that storage is shared.

On a cluster of several nodes, the Train workers of a trial write checkpoints to the storage path and read
the embedding cache, wherever Ray places them, and a restored study reads what they wrote. A folder that
only the driver's machine has cannot work there. :func:`check_shared_storage` asks every node whether it
sees a probe file the driver just wrote, and refuses the path with one clear message if one does not.
"""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path

from sbmoe_ray.errors import ConfigError


def cluster_address(address: str | None) -> str | None:
    """The cluster to connect to: ``address`` ("auto" or host:port), else ``$RAY_ADDRESS``, else None (local)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def init_ray(address: str | None, cpus_needed: float, dashboard: bool = True) -> None:
    """Connect to a cluster (see :func:`cluster_address`), else start a local Ray.

    A local Ray gets at least ``cpus_needed`` logical CPUs (a 2-core laptop can run a trial driver plus
    two 1-CPU workers); its dashboard (with ``dashboard`` and when ``ray[default]`` is installed) listens on
    localhost only, and token authentication stays on. Ray Train's preemption watcher, which looks for
    cloud nodes about to be reclaimed, is left off on a local Ray (it costs a process of ~0.1 GiB).
    """
    import ray

    if ray.is_initialized():
        return
    address = cluster_address(address)
    if address:
        check_address(address)
        try:
            ray.init(address=address)
        except ConnectionError as exc:
            raise ConfigError(f"--address={address!r}: no Ray cluster to connect to ({exc}); start one (ray start "
                              "--head), or leave --address out to run on a local Ray") from None
        return
    # Ray Train copies this variable from the driver's environment to its controller.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    # address="local": a new Ray, even when `ray start` left a cluster on this machine (plain ray.init()
    # would join that one, and refuse num_cpus).
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(cpus_needed)),
             include_dashboard=None if dashboard else False, dashboard_host="127.0.0.1")


def check_address(address: str, timeout: float = 5.0) -> None:
    """Refuse, within seconds, an address where no Ray cluster answers (Ray's own client would retry the
    connection for minutes without a word). ``auto`` is left to Ray, which answers at once when no
    cluster runs on this machine."""
    import socket

    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    key = "--address" if address != os.environ.get("RAY_ADDRESS") else "$RAY_ADDRESS"
    if not host or not port.isdigit():
        raise ConfigError(f"{key}={address!r}: expected host:port (e.g. 127.0.0.1:6379), ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"{key}={address!r}: no Ray cluster answers there ({exc.strerror or exc}); start one "
                          "(ray start --head, or ray up), check the address, or leave --address out to run "
                          "on a local Ray") from None


def check_resources(requests: dict[str, tuple[float, float]]) -> None:
    """Refuse what a trial asks for that no node of the connected cluster has (it would stay PENDING for
    ever): ``requests`` maps a config key to (CPUs, GPUs) one worker needs."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    most = {r: max((n.get(r, 0.0) for n in nodes), default=0.0) for r in ("CPU", "GPU")}
    for key, (cpus, gpus) in requests.items():
        for resource, need in (("CPU", cpus), ("GPU", gpus)):
            if need > most[resource]:
                raise ConfigError(f"{key}: a worker needs {need:g} {resource}(s), and no node of the cluster has "
                                  f"that many (the most on one node: {most[resource]:g}); lower it, or add nodes "
                                  "that have them")


def _sees(path: str, token: str) -> bool:
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def check_shared_storage(folders: list[Path], key: str = "storage_path") -> None:
    """On a multi-node cluster, refuse a folder that some alive node cannot see (not a shared file system).

    Writes a probe file into each folder (creating it), runs one zero-CPU task pinned to every alive node
    that reads it back, and removes the probe. Does nothing on a single node.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    probe_task = ray.remote(num_cpus=0, max_retries=0)(_sees)
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        probe = folder / f".sbmoe-shared-probe-{token}"
        probe.write_text(token)
        try:
            refs = [probe_task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                    .remote(str(probe), token) for n in nodes]
            seen = ray.get(refs, timeout=120)
        finally:
            probe.unlink(missing_ok=True)
        blind = [f"{n['NodeManagerAddress']} (node {n['NodeID'][:8]})" for n, ok in zip(nodes, seen) if not ok]
        if blind:
            raise ConfigError(
                f"config.{key}={str(folder)!r}: the Ray cluster has {len(nodes)} nodes and {len(blind)} of them "
                f"cannot see this folder ({', '.join(blind)}): it is local to the driver's machine. Put it on a "
                "file system that every node mounts at the same path (NFS/EFS, e.g. /mnt/shared/studies; see "
                "cluster.yaml)")


def in_ray_job() -> bool:
    """True in the driver of a job submitted with ``ray job submit`` (its supervisor sets this variable)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def check_job_paths(paths: dict[str, str | None]) -> None:
    """In a submitted Ray job, refuse a relative path among ``paths`` (config key -> value).

    A job's driver runs in a temporary copy of its ``--working-dir``, deleted with the job: a study, an MLflow
    store or a cache written there is lost, and the next submission cannot resume it. Does nothing outside a job.
    """
    if not in_ray_job():
        return
    for key, value in paths.items():
        local = value.removeprefix("sqlite:///") if value and value.startswith("sqlite:///") else value
        if local and "://" not in local and not Path(local).is_absolute():
            raise ConfigError(
                f"{key}={value!r}: a relative path in a Ray job names the job's temporary working directory, "
                "deleted when the job ends (nothing could resume it); give an absolute path on storage every "
                "node mounts, e.g. --set storage_path=/mnt/shared/studies --set "
                "tracking_uri=sqlite:////mnt/shared/mlflow.db (or an MLflow server: --tracking-uri http://...)")
