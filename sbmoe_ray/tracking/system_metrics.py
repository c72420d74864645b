"""System metrics (CPU, memory, disk, network, GPU) of every node a stage runs on, on the stage's MLflow run.

MLflow's own ``SystemMetricsMonitor`` samples psutil (and pynvml/pyrsmi where a GPU is) of the machine it runs
on and logs ``system/<node>/<metric>`` with a step count that a resumed study continues
(``resume_logging``). On a multi-node Ray cluster the driver's node is one of several, and the nodes need
not reach the MLflow store (a ``sqlite:///`` file on the driver, a server on the head's loopback). So the
samples travel through Ray instead: one small actor pinned to each other alive node (``num_cpus=0``, a hard
node affinity) holds MLflow's metric collectors; on the driver one ``SystemMetricsMonitor`` per node asks
its actor to sample, aggregate and clear, and logs the result under that node's name. One monitor class,
one logging path, one store connection; the curves of every node sit side by side on the stage run
("per node on a cluster", issue 23).

Node names are host names, stable across a resume (Ray node ids are not); when several nodes share a host
(``ray.cluster_utils.Cluster`` on loopback), a node's id prefix is added.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any


@dataclass
class NodeMonitors:
    """The monitors of one stage run: this node's, and one per other node of the cluster."""

    monitors: list = field(default_factory=list)
    actors: list = field(default_factory=list)


class NodeSampler:
    """Ray actor on one node: MLflow's collectors of that node (the same ones ``SystemMetricsMonitor`` builds)."""

    def __init__(self):
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
        from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
        from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.collectors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
        gpu = SystemMetricsMonitor._initialize_gpu_monitor(None)
        if gpu is not None:
            self.collectors.append(gpu)

    def collect(self) -> None:
        for collector in self.collectors:
            collector.collect_metrics()

    def aggregate_and_clear(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for collector in self.collectors:
            metrics.update(collector.aggregate_metrics())
            collector.clear_metrics()
        return metrics


class _RemoteCollector:
    """Stands, inside a driver-side ``SystemMetricsMonitor``, for the collectors of a node's ``NodeSampler``."""

    def __init__(self, actor):
        self.actor, self._metrics, self._pending = actor, {}, {}

    def collect_metrics(self) -> None:
        import ray

        ray.get(self.actor.collect.remote(), timeout=30)

    def aggregate_metrics(self) -> dict[str, float]:
        import ray

        self._pending = ray.get(self.actor.aggregate_and_clear.remote(), timeout=30)
        return self._pending

    def clear_metrics(self) -> None:
        self._pending = {}


def start(run_id: str, tracking_uri: str, interval: float) -> NodeMonitors:
    """Monitors logging into ``run_id``: this node's, plus every other alive node's when Ray runs a cluster."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    started = NodeMonitors()
    for name, actor in [(socket.gethostname(), None), *_other_nodes()]:
        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, samples_before_logging=1,
                                       resume_logging=True, node_id=name, tracking_uri=tracking_uri)
        if actor is not None:
            monitor.monitors = [_RemoteCollector(actor)]
            started.actors.append(actor)
        monitor.start()
        started.monitors.append(monitor)
    return started


def stop(started: NodeMonitors) -> None:
    """Stop every monitor, then log one last sample each: a stage shorter than the sampling interval (a
    resumed stage with nothing left to do, a tiny test study) still shows each node's state when it ended."""
    for monitor in started.monitors:
        monitor.finish()
        try:
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception:               # noqa: BLE001 - a node that died with the stage has no last sample
            pass
    if started.actors:
        import ray

        for actor in started.actors:
            ray.kill(actor)


def _other_nodes() -> list[tuple[str, Any]]:
    """(name, NodeSampler actor) of every alive node but this one; none outside a Ray cluster."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized():
        return []
    here = ray.get_runtime_context().get_node_id()
    nodes = [n for n in ray.nodes() if n["Alive"]]
    hosts = [n["NodeManagerHostname"] for n in nodes]
    sampler = ray.remote(num_cpus=0)(NodeSampler)
    others = []
    for node in nodes:
        if node["NodeID"] == here:
            continue
        name = node["NodeManagerHostname"]
        if hosts.count(name) > 1 or name == socket.gethostname():
            name = f"{name}-{node['NodeID'][:8]}"
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        others.append((name, sampler.options(scheduling_strategy=strategy).remote()))
    # Started (~2 s) before sampling begins; a node whose sampler cannot start within a minute is left out.
    refs = {actor.collect.remote(): (name, actor) for name, actor in others}
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=60) if refs else ([], [])
    for ref in late:
        ray.kill(refs[ref][1])
    return [refs[ref] for ref in ready]
