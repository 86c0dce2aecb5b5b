"""Registry with leases, routing, durable control-plane state, and the cluster token."""

from __future__ import annotations

import os
import stat
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from edge.v1 import control_plane_pb2 as cp_pb2
from edge.v1 import control_plane_pb2_grpc as cp_grpc
from edge.v1 import kv_pb2, origin_pb2, origin_pb2_grpc, pop_pb2_grpc
from edgectl.launcher import Cluster
from tests.conftest import FAST_TOPOLOGY, ClusterFactory, poll_until
from tests.integration.kvclient import metric_value


def _nodes(cluster: Cluster) -> dict[str, cp_pb2.NodeInfo]:
    return {info.name: info for info in cluster.list_nodes()}


def test_every_node_registers_with_its_addresses_and_role(shared_cluster: Cluster) -> None:
    nodes = _nodes(shared_cluster)
    assert set(nodes) == set(shared_cluster.nodes)
    for name, state in shared_cluster.nodes.items():
        info = nodes[name]
        assert info.healthy
        assert info.grpc_address == state.grpc_address
        assert info.metrics_address == state.metrics_address
        assert info.region == state.region
    roles = [info.role for info in nodes.values()]
    assert roles.count(cp_pb2.ROLE_POP) == 12
    assert roles.count(cp_pb2.ROLE_ORIGIN) == 1


def test_nodes_heartbeat_on_a_stream_not_a_call_each(shared_cluster: Cluster) -> None:
    # Every node renews its lease on one HeartbeatStream (answered in order): the unary
    # Heartbeat, a whole gRPC call each, is left to tools. A stream is counted in the
    # request metric when it ends, so while the nodes stay healthy no call is counted.
    heartbeat_calls = {"service": "ControlPlane", "method": "Heartbeat", "code": "OK"}
    calls_before = metric_value(
        shared_cluster, "control-plane", "edge_request_duration_seconds_count", heartbeat_calls
    )
    ages: list[float] = []

    def every_node_heartbeat_since_we_looked() -> bool:
        # Each node's last heartbeat arrived after the first look: ages below the window.
        nodes = [
            info
            for info in _nodes(shared_cluster).values()
            if info.role != cp_pb2.ROLE_CONTROL_PLANE
        ]
        ages[:] = [info.last_heartbeat_age_s for info in nodes]
        return all(info.healthy for info in nodes) and max(ages) < time.monotonic() - looked_at

    looked_at = time.monotonic()
    poll_until(every_node_heartbeat_since_we_looked, timeout=10, what="a heartbeat from each node")
    calls_after = metric_value(
        shared_cluster, "control-plane", "edge_request_duration_seconds_count", heartbeat_calls
    )
    assert calls_after == calls_before, ages


def test_node_that_stops_heartbeating_shows_unhealthy_within_3_s_and_reregisters(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(FAST_TOPOLOGY)
    incarnation = _nodes(cluster)["london-1"].incarnation
    cluster.kill("london-1")
    killed_at = time.monotonic()
    poll_until(lambda: not _nodes(cluster)["london-1"].healthy, timeout=5, what="unhealthy")
    assert time.monotonic() - killed_at < 3.0
    cluster.start("london-1")
    info = poll_until(
        lambda: (n := _nodes(cluster)["london-1"]).healthy and n, timeout=5, what="healthy"
    )
    assert info.incarnation > incarnation


def test_control_plane_state_survives_its_restart_and_nodes_stay_healthy(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(FAST_TOPOLOGY)
    before = _nodes(cluster)
    cluster.stop("control-plane")
    # The data plane does not need the control plane to serve.
    with grpc.insecure_channel(cluster.node("tokyo-1").grpc_address) as channel:
        pop_pb2_grpc.PopStub(channel).KvPut(
            kv_pb2.KvPutRequest(namespace="cp", key="k", value=b"v"), timeout=5
        )
    cluster.start("control-plane")
    after = _nodes(cluster)
    assert set(after) == set(before)
    for name, info in after.items():
        assert info.grpc_address == before[name].grpc_address
        assert info.healthy, name


def test_route_picks_the_nearest_healthy_pop_and_falls_back_to_another_region(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(FAST_TOPOLOGY)
    with grpc.insecure_channel(cluster.control_plane.grpc_address) as channel:
        stub = cp_grpc.ControlPlaneStub(channel)
        chosen = {stub.Route(cp_pb2.RouteRequest(region="tokyo")).name for _ in range(6)}
        assert chosen == {"tokyo-1", "tokyo-2"}, "users spread over the site's nodes"
        cluster.kill("tokyo-1")
        poll_until(
            lambda: (
                {stub.Route(cp_pb2.RouteRequest(region="tokyo")).name for _ in range(4)}
                == {"tokyo-2"}
            ),
            timeout=5,
        )
        cluster.kill("tokyo-2")
        poll_until(
            lambda: stub.Route(cp_pb2.RouteRequest(region="tokyo")).name == "london-1",
            timeout=5,
        )
        with pytest.raises(grpc.RpcError) as raised:
            stub.Route(cp_pb2.RouteRequest(region="atlantis"))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_internal_rpcs_need_the_cluster_token_and_health_and_reflection_stay_open(
    shared_cluster: Cluster,
) -> None:
    token_file = shared_cluster.token_file
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    wrong = [("authorization", "Bearer not-the-token")]
    with grpc.insecure_channel(shared_cluster.origin.grpc_address) as channel:
        origin = origin_pb2_grpc.OriginStub(channel)
        for metadata in ([], wrong):
            with pytest.raises(grpc.RpcError) as raised:
                next(
                    iter(
                        origin.Subscribe(
                            origin_pb2.SubscribeRequest(node="x", from_seq=1),
                            metadata=metadata,
                            timeout=5,
                        )
                    )
                )
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as raised:
                next(iter(origin.Dump(kv_pb2.DumpRequest(), metadata=metadata, timeout=5)))
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        services = {s.name for a in answers for s in a.list_services_response.service}
        assert "edge.v1.Origin" in services and "grpc.health.v1.Health" in services
    with grpc.insecure_channel(shared_cluster.control_plane.grpc_address) as channel:
        control = cp_grpc.ControlPlaneStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            control.RegisterNode(
                cp_pb2.RegisterNodeRequest(
                    node=cp_pb2.NodeInfo(
                        name="intruder",
                        region="tokyo",
                        role=cp_pb2.ROLE_POP,
                        grpc_address="127.0.0.1:1",
                    )
                ),
                timeout=5,
            )
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as raised:
            control.Heartbeat(cp_pb2.HeartbeatRequest(name="tokyo-1"), metadata=wrong, timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "intruder" not in _nodes(shared_cluster)
