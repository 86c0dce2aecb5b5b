"""A real Prometheus against a real cluster: targets, the lag query, the alert rules.

One module cluster (us-east-1 with the origin, london x1, tokyo x1, delay emulation on)
and one Prometheus from Debian's package, started the way `edgectl observe` starts it
(edgectl.observe.Observer: file-based discovery, deploy/prometheus's rules), scraping
and evaluating every second, listening on a free port, its data in the test's temp dir,
stopped by pid at teardown. Prometheus is required, never skipped: when it is missing
and cannot be installed the tests fail and say why.

Everything is read back through Prometheus's HTTP API (`/api/v1/query`,
`/api/v1/alerts`), as a dashboard or an on-call engineer would. Faults are set through
the control plane with the cluster token and healed in a `finally`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from edge.v1 import control_plane_pb2 as cp_pb2
from edge.v1 import control_plane_pb2_grpc as cp_grpc
from edgectl import observe
from edgectl.client import EdgeClient
from edgectl.launcher import Cluster, free_port, pid_alive
from edgepop.rpc import client_metadata
from tests.conftest import poll_until

pytestmark = pytest.mark.cluster

TOPOLOGY: dict[str, Any] = {
    "emulate_delay": True,
    "regions": [
        {"name": "us-east-1"},
        {"name": "london", "pop_nodes": 1},
        {"name": "tokyo", "pop_nodes": 1},
    ],
}
POPS = ("london-1", "tokyo-1")
# Caught up, a PoP's staleness bound is its one-way delay to the origin (40 ms from
# london, 85 ms from tokyo) plus up to a 100 ms heartbeat; 2 s leaves room for a busy
# machine and is still far below the partitioned values.
CAUGHT_UP_S = 2.0
# The lag query must rise above this during the partition (it grows 1 s per second).
PARTITIONED_S = 3.0
# Prometheus scrapes and evaluates every second: a few seconds covers discovery, a
# scrape and an evaluation; an alert with `for: 10s` needs that much more.
SCRAPED_TIMEOUT_S = 30.0
FIRING_TIMEOUT_S = 60.0
HEALED_TIMEOUT_S = 45.0
POLL_S = 0.25


@pytest.fixture(scope="module")
def binaries() -> observe.Binaries:
    try:
        return observe.ensure_prometheus()
    except observe.ObserveError as error:
        pytest.fail(
            "this test needs a real Prometheus (Debian's `prometheus` package: "
            f"apt-get install -y prometheus) and could not get one: {error}",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory, binaries: observe.Binaries
) -> Iterator[tuple[Cluster, observe.Observer]]:
    data_dir = tmp_path_factory.mktemp("prometheus")
    topology_file = data_dir / "topology.yaml"
    topology_file.write_text(yaml.safe_dump(TOPOLOGY))
    cluster = Cluster(data_dir, topology_file=topology_file)
    observer = observe.Observer(
        data_dir,
        port=0,
        scrape_interval_s=1.0,
        evaluation_interval_s=1.0,
        refresh_interval_s=0.5,
        binaries=binaries,
    )
    try:
        cluster.up()
        observer.start()
        observer.start_refresher()
        yield cluster, observer
    finally:
        observer.stop()
        cluster.down()


# -- helpers ---------------------------------------------------------------------------


def prometheus(observer: observe.Observer) -> observe.Prometheus:
    assert observer.prometheus is not None
    return observer.prometheus


def by_node(observer: observe.Observer, expr: str) -> dict[str, float]:
    """An instant query through /api/v1/query, one value per `node` label."""
    return {
        sample["metric"]["node"]: float(sample["value"][1])
        for sample in prometheus(observer).query(expr)
    }


def alert_states(observer: observe.Observer, name: str) -> dict[str, str]:
    """node -> state (pending or firing) of the active alerts called `name`."""
    return {
        alert["labels"].get("node", ""): alert["state"]
        for alert in prometheus(observer).alerts()
        if alert["labels"].get("alertname") == name
    }


def set_partition(cluster: Cluster, from_region: str, to_region: str) -> None:
    with EdgeClient.for_data_dir(cluster.data_dir) as client:
        client.set_link_fault(
            cp_pb2.SetLinkFaultRequest(
                from_region=from_region, to_region=to_region, partitioned=True
            )
        )


def heal(cluster: Cluster) -> None:
    with EdgeClient.for_data_dir(cluster.data_dir) as client:
        client.clear_faults(cp_pb2.ClearFaultsRequest())


def every_node_up(observer: observe.Observer, cluster: Cluster) -> dict[str, float] | None:
    up = by_node(observer, 'up{job="edgepop"}')
    if set(up) == set(cluster.nodes) and all(value == 1.0 for value in up.values()):
        return up
    return None


# -- tests -----------------------------------------------------------------------------


def test_every_node_is_an_up_target_and_each_pops_lag_reads_through_the_query_api(
    observed: tuple[Cluster, observe.Observer],
) -> None:
    cluster, observer = observed
    poll_until(
        lambda: every_node_up(observer, cluster),
        timeout=SCRAPED_TIMEOUT_S,
        interval=POLL_S,
        what="up == 1 for every node",
    )
    # The discovery labels: every target says which node, region and role it is.
    for sample in prometheus(observer).query('up{job="edgepop"}'):
        labels = sample["metric"]
        node = cluster.node(labels["node"])
        assert (labels["region"], labels["role"]) == (node.region, node.role)
        assert labels["instance"] == node.metrics_address

    lags = poll_until(
        lambda: (
            (lags := by_node(observer, 'edge_kv_replication_lag_seconds{role="pop"}'))
            and set(lags) == set(POPS)
            and lags
        ),
        timeout=SCRAPED_TIMEOUT_S,
        interval=POLL_S,
        what="edge_kv_replication_lag_seconds of every PoP",
    )
    for pop, lag in lags.items():
        assert 0.0 < lag < CAUGHT_UP_S, f"{pop} lag {lag} s while caught up"


def test_partition_raises_the_cut_off_pops_lag_and_fires_replication_lag_high(
    observed: tuple[Cluster, observe.Observer],
) -> None:
    cluster, observer = observed
    poll_until(
        lambda: every_node_up(observer, cluster),
        timeout=SCRAPED_TIMEOUT_S,
        interval=POLL_S,
        what="every node up before the partition",
    )
    lag_query = "edge_kv_replication_lag_seconds"
    try:
        set_partition(cluster, "london", "us-east-1")
        risen = poll_until(
            lambda: by_node(observer, f'{lag_query}{{node="london-1"}} > {PARTITIONED_S:g}'),
            timeout=SCRAPED_TIMEOUT_S,
            interval=POLL_S,
            what=f"london-1's lag above {PARTITIONED_S:g} s through /api/v1/query",
        )
        assert risen["london-1"] > PARTITIONED_S
        # Only the cut-off PoP: tokyo still hears the origin.
        tokyo = by_node(observer, f'{lag_query}{{node="tokyo-1"}}')
        assert tokyo["tokyo-1"] < CAUGHT_UP_S, tokyo

        seen: set[str] = set()

        def firing() -> bool:
            states = alert_states(observer, "ReplicationLagHigh")
            seen.update(states.values())
            assert "tokyo-1" not in states, states
            return states.get("london-1") == "firing"

        poll_until(
            firing,
            timeout=FIRING_TIMEOUT_S,
            interval=POLL_S,
            what="ReplicationLagHigh firing for london-1",
        )
        # The rule's `for: 10s` held it pending first (polled every 0.25 s, 10 s long).
        assert "pending" in seen
    finally:
        heal(cluster)

    # Healed: the stream resumes, the bound falls back and the alert resolves.
    poll_until(
        lambda: (
            (lag := by_node(observer, f'{lag_query}{{node="london-1"}}'))
            and lag["london-1"] < CAUGHT_UP_S
        ),
        timeout=HEALED_TIMEOUT_S,
        interval=POLL_S,
        what="london-1's lag back under 2 s after the heal",
    )
    poll_until(
        lambda: "london-1" not in alert_states(observer, "ReplicationLagHigh"),
        timeout=SCRAPED_TIMEOUT_S,
        interval=POLL_S,
        what="ReplicationLagHigh resolved",
    )


def test_a_stopped_node_stays_a_target_reported_down_until_it_starts_again(
    observed: tuple[Cluster, observe.Observer],
) -> None:
    cluster, observer = observed
    cluster.stop("tokyo-1")
    try:
        poll_until(
            lambda: by_node(observer, 'up{node="tokyo-1"} == 0'),
            timeout=SCRAPED_TIMEOUT_S,
            interval=POLL_S,
            what="up == 0 for the stopped tokyo-1",
        )
        poll_until(
            lambda: "tokyo-1" in alert_states(observer, "NodeDown"),
            timeout=SCRAPED_TIMEOUT_S,
            interval=POLL_S,
            what="NodeDown active for tokyo-1",
        )
        targets = json.loads(observer.targets_file.read_text())
        assert any(group["labels"]["node"] == "tokyo-1" for group in targets)
    finally:
        cluster.start("tokyo-1")
    poll_until(
        lambda: by_node(observer, 'up{node="tokyo-1"} == 1'),
        timeout=SCRAPED_TIMEOUT_S,
        interval=POLL_S,
        what="tokyo-1 up again on its old metrics port",
    )


def test_a_node_that_registers_later_becomes_a_target(
    observed: tuple[Cluster, observe.Observer],
) -> None:
    cluster, observer = observed
    # A node the launcher never started (as on another host): its own /metrics server,
    # known only to the control plane's registry. Its gRPC address is tokyo-1's, so a
    # client routed to it during its one lease still reaches a real PoP.
    server, thread = start_http_server(0, addr="127.0.0.1", registry=CollectorRegistry())
    metrics_address = f"127.0.0.1:{server.server_address[1]}"
    try:
        info = cp_pb2.NodeInfo(
            name="tokyo-9",
            region="tokyo",
            role=cp_pb2.ROLE_POP,
            grpc_address=cluster.node("tokyo-1").grpc_address,
            metrics_address=metrics_address,
        )
        with grpc.insecure_channel(cluster.control_plane.grpc_address) as channel:
            cp_grpc.ControlPlaneStub(channel).RegisterNode(
                cp_pb2.RegisterNodeRequest(node=info),
                metadata=client_metadata(token=cluster.token),
                timeout=5,
            )
        up = poll_until(
            lambda: by_node(observer, 'up{node="tokyo-9"} == 1'),
            timeout=SCRAPED_TIMEOUT_S,
            interval=POLL_S,
            what="the registered tokyo-9 scraped",
        )
        assert up == {"tokyo-9": 1.0}
        [sample] = prometheus(observer).query('up{node="tokyo-9"}')
        assert sample["metric"]["instance"] == metrics_address
        assert (sample["metric"]["region"], sample["metric"]["role"]) == ("tokyo", "pop")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- lifetime --------------------------------------------------------------------------

_STARTER = """
import sys, pathlib
from edgectl import observe
root = pathlib.Path(sys.argv[2])
prometheus = observe.Prometheus(
    pathlib.Path(sys.argv[1]), root / "prometheus.yml", root / "tsdb", root / "prometheus.log",
    host="127.0.0.1", port=int(sys.argv[3]),
)
prometheus.start()
print(prometheus.pid, flush=True)
sys.stdin.read()  # until killed
"""


def test_prometheus_stops_when_the_edgectl_that_started_it_is_killed(
    binaries: observe.Binaries, tmp_path: Path
) -> None:
    """`edgectl observe` killed -9 leaves no Prometheus behind (it cannot stop it itself)."""
    (tmp_path / "prometheus.yml").write_text("global:\n  scrape_interval: 15s\n")
    starter = subprocess.Popen(
        [sys.executable, "-c", _STARTER, str(binaries.prometheus), str(tmp_path), str(free_port())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert starter.stdout is not None
        prometheus_pid = int(starter.stdout.readline())
        assert pid_alive(prometheus_pid)
        os.kill(starter.pid, signal.SIGKILL)
        starter.wait(timeout=10)
        poll_until(lambda: not pid_alive(prometheus_pid), timeout=15, what="prometheus exits")
    finally:
        starter.kill()
