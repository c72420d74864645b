"""System metrics (CPU, memory, disk, network, GPU) of every node a stage runs on, on the stage's MLflow run.

MLflow's own ``SystemMetricsMonitor`` samples psutil (and pynvml/pyrsmi where a GPU is) of the machine it runs
on and logs ``system/<node>/<metric>`` with a step count that a resumed study continues
(``resume_logging``). On a multi-node Ray cluster the driver's node is one of several, and the nodes need
not reach the MLflow store (a ``sqlite:///`` file on the driver, a server on the head's loopback). So the
samples travel through Ray instead: one small actor pinned to each other alive node (``num_cpus=0``, a hard
node affinity) holds MLflow's metric collectors; on the driver one ``SystemMetricsMonitor`` per node asks
its actor to sample, aggregate and clear, and logs the result under that node's name. The actors start in
the background: a stage does not wait for them, and a node's curves begin once its actor runs (a loaded
node, a node still setting up its runtime environment). One monitor class, one logging path, one store
connection; the curves of every node sit side by side on the stage run ("per node on a cluster", issue 23).

Node names are host names, stable across a resume (Ray node ids are not); when several nodes share a host
(``ray.cluster_utils.Cluster`` on loopback), a node's id prefix is added.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field

_log = logging.getLogger(__name__)


@dataclass
class NodeMonitors:
    """The monitors of one stage run: this node's, and one per other node of the cluster."""

    monitors: list = field(default_factory=list)

    @property
    def samplers(self) -> list[_RemoteSampler]:
        """The other nodes' samplers, in the order of ``monitors[1:]``."""
        return [collector for monitor in self.monitors for collector in monitor.monitors
                if isinstance(collector, _RemoteSampler)]


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


class _RemoteSampler:
    """Stands, inside a driver-side ``SystemMetricsMonitor``, for the collectors of one node's ``NodeSampler``.

    Until the actor's first ``collect`` has returned, the node has no samples (its monitor logs nothing).
    Ray can end an actor it is still creating when its GCS cannot reach the actor's owner for a moment
    (``REF_DELETED``: "all references to the actor were removed"), so an actor that dies before it ran is
    started once more. One that dies after it ran (its node lost), or twice before, ends the node's curve:
    later calls do nothing, and the monitor's thread goes on for the other nodes. A node too busy to answer
    within ``ANSWER_WITHIN_S`` skips that sample."""

    ANSWER_WITHIN_S = 30.0

    def __init__(self, name: str, node_id: str):
        self.name, self.node_id = name, node_id
        self.started = self.gone = False
        self.restarts = 0
        self._metrics: dict = {}        # read by SystemMetricsMonitor.collect_metrics: the samples stay on the node
        self._launch()

    def _launch(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategy = NodeAffinitySchedulingStrategy(self.node_id, soft=False)
        self.actor = ray.remote(num_cpus=0)(NodeSampler).options(scheduling_strategy=strategy).remote()
        self._first = self.actor.collect.remote()

    def _running(self) -> bool:
        import ray

        if self.gone:
            return False
        if self.started:
            return True
        if not ray.wait([self._first], timeout=0)[0]:
            return False
        try:
            ray.get(self._first)
            self.started = True
        except ray.exceptions.RayError as error:
            if self.restarts:
                self._give_up(f"its sampler died twice before it ran: {str(error).splitlines()[0]}")
            else:
                self.restarts += 1
                _log.info("node %s: its sampler died before it ran; starting it again", self.name)
                self._launch()
        return self.started

    def _call(self, method) -> dict:
        import ray

        if not self._running():
            return {}
        try:
            return ray.get(method.remote(), timeout=self.ANSWER_WITHIN_S) or {}
        except ray.exceptions.GetTimeoutError:
            return {}                   # a node too busy to answer: no sample this time
        except ray.exceptions.RayActorError as error:
            self._give_up(f"its sampler stopped: {str(error).splitlines()[0]}")
            return {}

    def _give_up(self, why: str) -> None:
        self.gone = True
        _log.warning("no more system metrics from node %s: %s", self.name, why)

    def collect_metrics(self) -> None:
        self._call(self.actor.collect)

    def aggregate_metrics(self) -> dict[str, float]:
        return self._call(self.actor.aggregate_and_clear)

    def clear_metrics(self) -> None:
        pass


def start(run_id: str, tracking_uri: str, interval: float) -> NodeMonitors:
    """Monitors logging into ``run_id``: this node's, plus every other alive node's when Ray runs a cluster."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    started = NodeMonitors()
    for name, node_id in [(socket.gethostname(), None), *_other_nodes()]:
        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, samples_before_logging=1,
                                       resume_logging=True, node_id=name, tracking_uri=tracking_uri)
        if node_id is not None:
            monitor.monitors = [_RemoteSampler(name, node_id)]
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
    if started.samplers:
        import ray

        for sampler in started.samplers:
            ray.kill(sampler.actor)


def _other_nodes() -> list[tuple[str, str]]:
    """(name, Ray node id) of every alive node but this one; none outside a Ray cluster."""
    import ray

    if not ray.is_initialized():
        return []
    here = ray.get_runtime_context().get_node_id()
    nodes = [n for n in ray.nodes() if n["Alive"]]
    hosts = [n["NodeManagerHostname"] for n in nodes]
    others = []
    for node in nodes:
        if node["NodeID"] == here:
            continue
        name = node["NodeManagerHostname"]
        if hosts.count(name) > 1 or name == socket.gethostname():
            name = f"{name}-{node['NodeID'][:8]}"
        others.append((name, node["NodeID"]))
    return others
