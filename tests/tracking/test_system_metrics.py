"""System metrics per node on a cluster: on a Ray cluster of a head and two worker nodes on loopback (Ray's
own ``cluster_utils.Cluster``), a stage run records the system metrics of each of the three nodes under its
own name, read back from a real SQLite store, and the nodes' samplers are gone when the stage ends."""

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
    time.sleep(5)
    system_metrics.stop(started)
    names = [m for m in client.get_run(run_id).data.metrics if m.endswith("/cpu_utilization_percentage")]
    nodes = {m.split("/")[1] for m in names}
    assert len(nodes) == 3, names                            # the driver's node and the two others
    for name in names:
        assert len(client.get_metric_history(run_id, name)) >= 2, [(n, len(client.get_metric_history(run_id, n))) for n in names]
    assert len(started.actors) == 2
    time.sleep(1)
    alive = [a for a in list_actors(filters=[("state", "=", "ALIVE")])
             if a.class_name == "NodeSampler"]
    assert not alive
