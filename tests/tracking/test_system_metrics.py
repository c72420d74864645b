"""System metrics per node on a cluster: on a Ray cluster of a head and two worker nodes on loopback (Ray's
own ``cluster_utils.Cluster``), a stage run records the system metrics of each of the three nodes under its
own name, read back from a real SQLite store; a node's sampler that dies ends only that node's curve, one
that dies before it ran is started again, one too busy to answer skips a sample, and the nodes' samplers are
gone when the stage ends."""

from __future__ import annotations

import time

import pytest
import ray
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from sbmoe_ray.tracking import system_metrics

from helpers import own_ports

pytestmark = [pytest.mark.slow, pytest.mark.multinode]


@pytest.fixture
def cluster():
    # the head's dashboard and agent on ports of their own: another Ray on the machine (the other test worker's)
    # may hold the defaults, and a state API without its dashboard cannot list actors
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": True,
                                                            "dashboard_host": "127.0.0.1", **own_ports()})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_a_stage_run_on_a_cluster_records_each_nodes_system_metrics(tmp_path, cluster):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("nodes")).info.run_id
    started = system_metrics.start(run_id, uri, interval=0.5)
    nodes = [monitor.node_id for monitor in started.monitors]
    assert len(nodes) == 3, nodes                            # the driver's node and the two others
    # the samplers start in the background (a loaded machine can take a minute): wait for two samples a node
    _wait_for(lambda: all(_samples(client, run_id, node) >= 2 for node in nodes),
              lambda: {node: _samples(client, run_id, node) for node in nodes})
    # a node's sampler that dies mid-stage (its node lost) ends that node's curve; the other nodes go on
    lost, kept = started.samplers
    ray.kill(lost.actor)
    _wait_for(lambda: lost.gone, lambda: "the killed sampler is not seen as gone")
    kept_before = _samples(client, run_id, kept.name)
    _wait_for(lambda: _samples(client, run_id, kept.name) >= kept_before + 2,
              lambda: "the other node stopped logging after one node's sampler died")
    assert not kept.gone and lost.restarts == 0
    assert all(monitor._process.is_alive() for monitor in started.monitors)
    system_metrics.stop(started)
    assert all(_samples(client, run_id, node) >= 2 for node in nodes)
    time.sleep(1)
    alive = [a for a in list_actors(filters=[("state", "=", "ALIVE")])
             if a.class_name == "NodeSampler"]
    assert not alive


class _FirstLaunchDies(system_metrics._RemoteSampler):
    """A node's sampler whose first actor dies before it runs, as Ray's REF_DELETED ends one."""

    def _launch(self) -> None:
        if hasattr(self, "actor"):
            super()._launch()
        else:
            class DiesBeforeItRuns:                 # local, so that Ray ships it by value
                def __init__(self):
                    raise RuntimeError("this sampler dies in its creation")

                def collect(self) -> None:
                    pass

            self.actor = ray.remote(num_cpus=0)(DiesBeforeItRuns).remote()
            self._first = self.actor.collect.remote()


class _BusyOnce(system_metrics._RemoteSampler):
    """A node's sampler whose first answer comes long after the driver stops waiting for it."""

    ANSWER_WITHIN_S = 1.0

    def _launch(self) -> None:
        class BusyOnce:                             # local, so that Ray ships it by value
            def __init__(self):
                self.answers = 0

            def collect(self) -> None:
                pass

            def aggregate_and_clear(self) -> dict:
                self.answers += 1
                if self.answers == 1:
                    time.sleep(4)
                return {"cpu_utilization_percentage": float(self.answers)}

        self.actor = ray.remote(num_cpus=0)(BusyOnce).remote()
        self._first = self.actor.collect.remote()


def test_a_nodes_sampler_that_dies_before_it_runs_is_started_once_more_and_a_busy_one_skips_a_sample():
    ray.init(address="local", num_cpus=1, include_dashboard=False)   # not a `ray start` head beside it
    try:
        sampler = _FirstLaunchDies("node", ray.get_runtime_context().get_node_id())
        _wait_for(lambda: sampler._running() or sampler.gone, lambda: "the sampler never ran")
        assert (sampler.started, sampler.restarts, sampler.gone) == (True, 1, False)
        sampler.collect_metrics()
        assert "cpu_utilization_percentage" in sampler.aggregate_metrics()
        ray.kill(sampler.actor)

        busy = _BusyOnce("busy", ray.get_runtime_context().get_node_id())
        _wait_for(lambda: busy._running(), lambda: "the busy sampler never ran")
        assert busy.aggregate_metrics() == {}       # not answered within ANSWER_WITHIN_S: no sample this time
        assert not busy.gone                        # ... and its node's curve goes on
        answers = []
        _wait_for(lambda: answers.append(busy.aggregate_metrics()) or answers[-1], lambda: f"no answer: {answers}",
                  seconds=60)
        assert answers[-1]["cpu_utilization_percentage"] >= 2 and not busy.gone
        ray.kill(busy.actor)
    finally:
        ray.shutdown()


def _samples(client: MlflowClient, run_id: str, node: str) -> int:
    return len(client.get_metric_history(run_id, f"system/{node}/cpu_utilization_percentage"))


def _wait_for(condition, why, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, why()
        time.sleep(0.25)
