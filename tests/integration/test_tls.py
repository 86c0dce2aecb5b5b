"""Mutual TLS end to end: a cluster started by `edgectl cluster up --tls`.

Refusals: a plaintext client, a client without a certificate and one with a certificate
from another CA all fail to connect (UNAVAILABLE) at every role; the cluster CA's client
is served, and still needs the cluster token for internal methods. Node to node: writes
replicate, an object call entering at one PoP runs at another, and a worker's
subrequest reaches the origin application over HTTPS. Every edgectl command used here
finds the cluster's TLS setting in `cluster.json`.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from edge.v1 import control_plane_pb2_grpc as cp_grpc
from edge.v1 import kv_pb2, objects_pb2, pop_pb2, workers_pb2
from edgectl.certs import ensure_certs
from edgectl.client import ClusterMonitor, NodeSample
from edgectl.launcher import Cluster
from edgepop.bundle import read_bundle
from edgepop.tls import CA_CERT_FILE_NAME, CLIENT_NAME, TlsConfig
from tests.conftest import FAST_TOPOLOGY, PLAINTEXT_CHANNEL, TLS_DEFAULT, poll_until
from tests.integration.kvclient import auth, converged, pop_stub

pytestmark = pytest.mark.cluster

COMMAND_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 5.0
PROXY_WORKER = Path(__file__).resolve().parents[1] / "fixtures" / "workers" / "proxy"


def edgectl(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI, as a user's shell runs it; fails the test on a non-zero exit."""
    done = subprocess.run(
        [sys.executable, "-m", "edgectl", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"edgectl {' '.join(args)}: {done.stderr}"
    return done


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """FAST_TOPOLOGY started with `edgectl cluster up --tls` (certificates made by it)."""
    data_dir = tmp_path_factory.mktemp("tls") / "cluster"
    topology_file = data_dir.parent / "topology.yaml"
    topology_file.write_text(yaml.safe_dump(FAST_TOPOLOGY))
    try:
        edgectl(
            data_dir, "cluster", "up", "--tls", "--detach", "--no-workers",
            "--topology", str(topology_file),
        )  # fmt: skip
        yield Cluster.open(data_dir)
    finally:
        if (data_dir / "cluster.json").exists():
            Cluster.open(data_dir).down()


@pytest.fixture(scope="module")
def foreign_tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA and a client certificate it signed (no node of the cluster trusts it)."""
    tls_dir = tmp_path_factory.mktemp("foreign-ca")
    ensure_certs(tls_dir, [])
    return tls_dir


def _ca(cluster: Cluster) -> bytes:
    return (cluster.tls_dir / CA_CERT_FILE_NAME).read_bytes()


def _health(channel: grpc.Channel) -> Any:
    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S
    )


def _refused(channel: grpc.Channel) -> grpc.StatusCode:
    """The status of a health check that must not get through."""
    with channel, pytest.raises(grpc.RpcError) as raised:
        _health(channel)
    code: grpc.StatusCode = raised.value.code()
    return code


def _client_credentials(tls_dir: Path, roots: bytes) -> grpc.ChannelCredentials:
    """The client certificate in `tls_dir`, trusting `roots` for the server."""
    return grpc.ssl_channel_credentials(
        root_certificates=roots,
        private_key=(tls_dir / f"{CLIENT_NAME}.key").read_bytes(),
        certificate_chain=(tls_dir / f"{CLIENT_NAME}.crt").read_bytes(),
    )


# -- refusals ------------------------------------------------------------------------------


def test_cluster_up_tls_made_the_certificates_and_recorded_tls(tls_cluster: Cluster) -> None:
    assert tls_cluster.tls
    assert json.loads(tls_cluster.state_file.read_text())["tls"] is True
    for name in [*tls_cluster.nodes, CLIENT_NAME]:
        TlsConfig.from_dir(tls_cluster.tls_dir, name).check()


def test_plaintext_client_is_refused_at_every_role(tls_cluster: Cluster) -> None:
    for node in tls_cluster.nodes.values():
        channel = PLAINTEXT_CHANNEL(node.grpc_address)
        assert _refused(channel) == grpc.StatusCode.UNAVAILABLE, node.name


def test_client_without_a_certificate_is_refused_at_every_role(tls_cluster: Cluster) -> None:
    # It trusts the cluster CA, so only the missing client certificate can fail it.
    credentials = grpc.ssl_channel_credentials(root_certificates=_ca(tls_cluster))
    for node in tls_cluster.nodes.values():
        channel = grpc.secure_channel(node.grpc_address, credentials)
        assert _refused(channel) == grpc.StatusCode.UNAVAILABLE, node.name


def test_client_with_a_certificate_from_another_ca_is_refused_at_every_role(
    tls_cluster: Cluster, foreign_tls_dir: Path
) -> None:
    credentials = _client_credentials(foreign_tls_dir, roots=_ca(tls_cluster))
    for node in tls_cluster.nodes.values():
        channel = grpc.secure_channel(node.grpc_address, credentials)
        assert _refused(channel) == grpc.StatusCode.UNAVAILABLE, node.name


def test_client_does_not_trust_a_server_outside_its_ca(
    tls_cluster: Cluster, foreign_tls_dir: Path
) -> None:
    # The cluster's own client certificate, but trusting only the foreign CA: the client
    # must reject the node's certificate.
    roots = (foreign_tls_dir / CA_CERT_FILE_NAME).read_bytes()
    credentials = _client_credentials(tls_cluster.tls_dir, roots=roots)
    channel = grpc.secure_channel(tls_cluster.origin.grpc_address, credentials)
    assert _refused(channel) == grpc.StatusCode.UNAVAILABLE


def test_cluster_client_gets_health_and_reflection_and_still_needs_the_token(
    tls_cluster: Cluster,
) -> None:
    with tls_cluster.channel(tls_cluster.origin.grpc_address) as channel:
        assert _health(channel).status == health_pb2.HealthCheckResponse.SERVING
        answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            timeout=CALL_TIMEOUT_S,
        )
        services = {s.name for a in answers for s in a.list_services_response.service}
        assert "edge.v1.Origin" in services
    with pop_stub(tls_cluster, "tokyo-1") as stub, pytest.raises(grpc.RpcError) as raised:
        next(iter(stub.Dump(kv_pb2.DumpRequest(), timeout=CALL_TIMEOUT_S)))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


# -- node to node --------------------------------------------------------------------------


def test_writes_replicate_to_every_pop_over_mtls(tls_cluster: Cluster) -> None:
    key = uuid.uuid4().hex
    with pop_stub(tls_cluster, "tokyo-1") as stub:
        seq = stub.KvPut(
            kv_pb2.KvPutRequest(namespace="tls", key=key, value=b"v"), timeout=CALL_TIMEOUT_S
        ).seq
    poll_until(
        lambda: all(
            _pop_status(tls_cluster, pop.name).applied_seq >= seq for pop in tls_cluster.pops
        ),
        timeout=10,
        what=f"seq {seq} at every PoP",
    )
    poll_until(lambda: converged(tls_cluster), timeout=10, what="replicas equal the origin")


def _pop_status(cluster: Cluster, name: str) -> pop_pb2.PopStatusResponse:
    with pop_stub(cluster, name) as stub:
        return stub.Status(pop_pb2.PopStatusRequest(), timeout=CALL_TIMEOUT_S)


def test_object_call_entering_at_one_pop_runs_at_another(tls_cluster: Cluster) -> None:
    name = uuid.uuid4().hex
    request = objects_pb2.ObjectCallRequest(
        namespace="Counter", name=name, method="increment", location_hint="london"
    )
    with pop_stub(tls_cluster, "tokyo-1") as stub:
        first = stub.ObjectCall(request, timeout=10)
        second = stub.ObjectCall(request, timeout=10)
    # Placed in London, entered in Tokyo: forwarded PoP to PoP, and each reply waited
    # for the standby's copy (another PoP) — both over mTLS.
    assert first.node == second.node == "london-1"
    assert (json.loads(first.result_json), json.loads(second.result_json)) == (1, 2)
    with tls_cluster.channel(tls_cluster.control_plane.grpc_address) as channel:
        placements = cp_grpc.ControlPlaneStub(channel).ListPlacements(
            objects_pb2.ListPlacementsRequest(), metadata=auth(tls_cluster), timeout=5
        )
    placement = next(p for p in placements.placements if p.id == first.id)
    assert placement.owner == "london-1" and placement.standby.startswith("tokyo-")


def _https_get(url: str, context: ssl.SSLContext, host: str = "") -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        return int(response.status), bytes(response.read())


def test_worker_subrequest_reaches_the_origin_over_https(tls_cluster: Cluster) -> None:
    with tls_cluster.channel(tls_cluster.control_plane.grpc_address) as channel:
        deployed = cp_grpc.ControlPlaneStub(channel).Deploy(
            workers_pb2.DeployRequest(bundle=read_bundle(PROXY_WORKER)),
            metadata=auth(tls_cluster),
            timeout=10,
        )
    pop = tls_cluster.node("tokyo-1")
    poll_until(
        lambda: any(
            worker.version == deployed.version
            for worker in _pop_status(tls_cluster, pop.name).workers
        ),
        timeout=15,
        what="the proxy worker loaded at tokyo-1",
    )
    assert tls_cluster.client_tls is not None
    client = tls_cluster.client_tls.client_ssl_context()
    path = f"/tls-check/{uuid.uuid4().hex}"
    url = f"{tls_cluster.http_scheme}://{pop.http_address}{path}"
    status, body = _https_get(url, client, host="proxy.test")
    # The origin's catch-all answered: the PoP reached it, and the origin speaks only HTTPS.
    assert status == 200
    assert json.loads(body) == {"origin": True, "method": "GET", "path": path}


def test_origin_http_requires_a_client_certificate_and_the_pop_ingress_does_not(
    tls_cluster: Cluster, foreign_tls_dir: Path
) -> None:
    ca = _ca(tls_cluster).decode()
    anonymous = ssl.create_default_context(cadata=ca)
    foreign = ssl.create_default_context(cadata=ca)
    foreign.load_cert_chain(
        foreign_tls_dir / f"{CLIENT_NAME}.crt", foreign_tls_dir / f"{CLIENT_NAME}.key"
    )
    origin = f"https://{tls_cluster.origin.http_address}/anything"
    for context in (anonymous, foreign):
        with pytest.raises(OSError):
            _https_get(origin, context)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{tls_cluster.origin.http_address}/anything", timeout=5)
    # End users reach the PoP ingress without a certificate (none of its routes matches
    # here: 404 from the PoP itself); a certificate from another CA is still refused.
    pop = f"https://{tls_cluster.node('london-1').http_address}/"
    with pytest.raises(urllib.error.HTTPError) as answered:
        _https_get(pop, anonymous, host="nothing.test")
    assert answered.value.code == 404
    with pytest.raises(OSError) as refused:
        _https_get(pop, foreign, host="nothing.test")
    assert not isinstance(refused.value, urllib.error.HTTPError)


def test_metrics_stay_plain_http(tls_cluster: Cluster) -> None:
    address = tls_cluster.origin.metrics_address
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        assert b"edge_request_duration_seconds" in response.read()


# -- edgectl -------------------------------------------------------------------------------


def test_edgectl_commands_work_against_a_tls_cluster(tls_cluster: Cluster) -> None:
    data_dir = tls_cluster.data_dir
    nodes = json.loads(edgectl(data_dir, "nodes", "--json").stdout)
    assert {node["name"] for node in nodes} == set(tls_cluster.nodes)
    assert all(node["healthy"] for node in nodes)
    key = uuid.uuid4().hex
    edgectl(data_dir, "kv", "put", key, "over-tls", "--pop", "tokyo-1")
    got = edgectl(data_dir, "kv", "get", key, "--pop", "tokyo-1", "--consistency", "strong")
    assert got.stdout == "over-tls"
    edgectl(data_dir, "net", "delay", "tokyo", "london", "20")
    edgectl(data_dir, "net", "heal")
    called = edgectl(data_dir, "do", "call", "Counter", key, "increment", "--json")
    assert json.loads(called.stdout)["result"] == 1
    token = edgectl(data_dir, "token", "issue", "--sub", "alice").stdout.strip()
    assert token.count(".") == 2, "a JWT from the origin over HTTPS"
    edgectl(data_dir, "probe", "--calls", "1", "--region", "tokyo")
    edgectl(data_dir, "node", "stop", "london-1")
    edgectl(data_dir, "node", "start", "london-1")
    rows = json.loads(edgectl(data_dir, "cluster", "status", "--json").stdout)
    assert all(row["healthy"] for row in rows)


def test_live_view_samples_every_node_of_a_tls_cluster(tls_cluster: Cluster) -> None:
    def answered(rows: list[NodeSample]) -> bool:
        return all(
            row.healthy and (row.role == "control_plane" or row.seq is not None) for row in rows
        )

    with futures.ThreadPoolExecutor(max_workers=len(tls_cluster.nodes) + 1) as pool:
        monitor = ClusterMonitor(Cluster.open(tls_cluster.data_dir), pool)
        try:
            poll_until(lambda: answered(monitor.sample()), timeout=10, what="every node sampled")
        finally:
            monitor.close()


def test_fixture_clusters_follow_the_session_tls_setting(shared_cluster: Cluster) -> None:
    """Under EDGEPOP_TEST_TLS=1 (`make test-tls`) the shared cluster really runs TLS."""
    assert shared_cluster.tls is TLS_DEFAULT
    channel = PLAINTEXT_CHANNEL(shared_cluster.origin.grpc_address)
    if TLS_DEFAULT:
        assert _refused(channel) == grpc.StatusCode.UNAVAILABLE
    else:
        with channel:
            assert _health(channel).status == health_pb2.HealthCheckResponse.SERVING
