"""How edgectl reaches a cluster: channels, metadata, targets, and the live-view sampler.

A command never guesses addresses: the control plane's address comes from the data
dir's `cluster.json` (or `--control-plane`), every other node's from
`ControlPlane.ListNodes` / `Route`. KV and status calls say where the caller is with
`x-edge-region`, so the receiving node applies the emulated round trip, and stamp
`x-edge-sent-at` per call so the node counts the loopback transport against that round
trip. Each call is timed on its own (after the channel is connected) so the latency a
user sees is the one the platform produces, not TCP setup or Python start-up. Admin
calls (link faults, placements, deploys) carry the cluster token read from the data dir;
so does the one HTTP call, the origin's token issuer (`/auth/token`).

Against a cluster that runs mutual TLS (`cluster.json` says so, or `DIR/tls/client.crt`
exists when there is no `cluster.json`), every channel presents `DIR/tls/client.crt`
and verifies nodes against `DIR/tls/ca.crt`; the token issuer is called over HTTPS.

`ClusterMonitor` gathers what the foreground `cluster up` shows each second. Each
node is probed in a thread pool with a short deadline, so one slow or dead node leaves
its own row stale instead of freezing the whole view.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
from prometheus_client.parser import text_string_to_metric_families

from edge.v1 import control_plane_pb2 as cp_pb2
from edge.v1 import control_plane_pb2_grpc as cp_grpc
from edge.v1 import (
    kv_pb2,
    node_pb2,
    objects_pb2,
    origin_pb2,
    origin_pb2_grpc,
    pop_pb2,
    pop_pb2_grpc,
    sql_pb2,
    workers_pb2,
)
from edgectl.launcher import (
    Cluster,
    NodeState,
    client_tls_for,
    pid_alive,
    secure_or_insecure_channel,
)
from edgepop import metrics
from edgepop.auth import TOKEN_FILE_NAME
from edgepop.host_cpu import CpuTimes, ProcessCpu
from edgepop.netem import sent_at_metadata
from edgepop.requestid import new_request_id
from edgepop.rpc import CHANNEL_OPTIONS, client_metadata
from edgepop.tls import TlsConfig

RPC_TIMEOUT_S_DEFAULT = 10.0
CONNECT_TIMEOUT_S = 5.0
# The live view refreshes about once a second; a probe must fit well inside that.
PROBE_TIMEOUT_S = 0.8
# HTTP statuses of the origin's token issuer, as the gRPC codes every error is shown in.
HTTP_STATUS_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
REQUEST_HISTOGRAM = "edge_request_duration_seconds"
REQUEST_COUNT_SAMPLE = f"{REQUEST_HISTOGRAM}_count"
REQUEST_BUCKET_SAMPLE = f"{REQUEST_HISTOGRAM}_bucket"
REQUEST_SAMPLES = (REQUEST_COUNT_SAMPLE, REQUEST_BUCKET_SAMPLE)
# The live view's and console's own polls: left out of requests/s, so an idle cluster
# shows ~0 (the nodes' RequestTotals leave out the same calls).
MONITOR_METHODS = metrics.MONITOR_METHODS

ROLE_NAMES = {
    cp_pb2.ROLE_CONTROL_PLANE: "control_plane",
    cp_pb2.ROLE_ORIGIN: "origin",
    cp_pb2.ROLE_POP: "pop",
}

T = TypeVar("T")
KvStub = pop_pb2_grpc.PopStub | origin_pb2_grpc.OriginStub
StatusResponse = pop_pb2.PopStatusResponse | origin_pb2.OriginStatusResponse


class CliError(Exception):
    """A failure to report as `error: CODE: details` (CODE is a gRPC status name)."""

    def __init__(self, code: str, details: str, *, message: str = "", where: str = "") -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details
        # A node's status: its message as sent, and the node that sent it.
        self.message = message or details
        self.where = where

    @classmethod
    def from_rpc(cls, error: grpc.RpcError, where: str = "") -> CliError:
        code = error.code().name if callable(getattr(error, "code", None)) else "UNKNOWN"
        details = error.details() if callable(getattr(error, "details", None)) else str(error)
        return cls(
            code,
            f"{details} ({where})" if where else str(details),
            message=str(details),
            where=where,
        )


def role_name(role: cp_pb2.Role.ValueType) -> str:
    return ROLE_NAMES.get(role, "unknown")


@dataclass(frozen=True)
class Target:
    """The node a KV command talks to and the location the caller claims to be in."""

    name: str
    role: str  # "pop" | "origin"
    region: str
    grpc_address: str
    # Sent as x-edge-region: the receiving node delays the call by this region's RTT.
    caller_region: str


@dataclass(frozen=True)
class Timed(Generic[T]):
    """An RPC's response and how long the call took, measured at the client."""

    response: T
    latency_ms: float


class EdgeClient:
    """Synchronous gRPC access to one cluster; channels are opened once and reused."""

    def __init__(
        self,
        control_plane_address: str,
        *,
        token: str | None = None,
        timeout_s: float = RPC_TIMEOUT_S_DEFAULT,
        token_file: Path | None = None,
        tls: TlsConfig | None = None,
    ) -> None:
        self.control_plane_address = control_plane_address
        self.token = token
        self.timeout_s = timeout_s
        # The client certificate to present (None: the cluster speaks plaintext).
        self.tls = tls
        # Where the token was looked for: named in the error when an admin call lacks it.
        self.token_file = token_file
        self._channels: dict[str, grpc.Channel] = {}

    @classmethod
    def for_args(cls, args: argparse.Namespace) -> EdgeClient:
        """A client as every command's global options ask (--data-dir, --control-plane,
        --timeout)."""
        return cls.for_data_dir(
            args.data_dir, control_plane=args.control_plane, timeout_s=args.timeout
        )

    @classmethod
    def for_data_dir(
        cls,
        data_dir: Path,
        *,
        control_plane: str | None = None,
        timeout_s: float = RPC_TIMEOUT_S_DEFAULT,
    ) -> EdgeClient:
        """A client of the cluster recorded in `data_dir` (or at `control_plane`)."""
        token_file = data_dir / TOKEN_FILE_NAME
        # Read, never create: a token made here would not be the cluster's.
        token = token_file.read_text().strip() if token_file.is_file() else None
        if control_plane is None:
            node = Cluster.open(data_dir).control_plane
            control_plane = node.grpc_address or f"127.0.0.1:{node.grpc_port}"
        return cls(
            control_plane,
            token=token,
            timeout_s=timeout_s,
            token_file=token_file,
            tls=client_tls_for(data_dir),
        )

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def channel(self, address: str, *, name: str = "", connect: bool = True) -> grpc.Channel:
        """A connected channel to `address`; UNAVAILABLE when it cannot connect in time.

        With `connect=False` the channel is returned at once and connects on first use:
        for polls that give each node its own short deadline, so one dead node costs its
        call's deadline rather than the connect timeout.
        """
        channel = self._channels.get(address)
        if channel is None:
            channel = secure_or_insecure_channel(address, self.tls, CHANNEL_OPTIONS)
            if not connect:
                self._channels[address] = channel
                return channel
            try:
                connect_s = min(CONNECT_TIMEOUT_S, self.timeout_s)
                grpc.channel_ready_future(channel).result(timeout=connect_s)
            except grpc.FutureTimeoutError as error:
                channel.close()
                label = f"{name} at {address}" if name else address
                raise CliError("UNAVAILABLE", f"cannot connect to {label}") from error
            self._channels[address] = channel
        return channel

    # -- control plane -----------------------------------------------------------------

    def _control_plane(self) -> cp_grpc.ControlPlaneStub:
        return cp_grpc.ControlPlaneStub(
            self.channel(self.control_plane_address, name="the control plane")
        )

    def list_nodes(self) -> list[cp_pb2.NodeInfo]:
        response = self._call(
            self._control_plane().ListNodes, cp_pb2.ListNodesRequest(), "control plane"
        )
        return list(response.nodes)

    def topology(self) -> cp_pb2.Topology:
        topology: cp_pb2.Topology = self._call(
            self._control_plane().GetTopology, cp_pb2.GetTopologyRequest(), "control plane"
        )
        return topology

    def route(self, region: str) -> cp_pb2.RouteResponse:
        # No x-edge-region here: routing stands in for anycast/DNS, which a real client
        # gets without a round trip to us-east-1.
        route: cp_pb2.RouteResponse = self._call(
            self._control_plane().Route, cp_pb2.RouteRequest(region=region), "control plane"
        )
        return route

    def _admin_metadata(self) -> tuple[tuple[str, str], ...]:
        """The bearer token for admin calls; a clear error instead of UNAUTHENTICATED."""
        return client_metadata(token=self.cluster_token())

    def cluster_token(self) -> str:
        """The cluster token, or UNAUTHENTICATED naming where it was looked for."""
        if not self.token:
            where = f" at {self.token_file}" if self.token_file else ""
            raise CliError(
                "UNAUTHENTICATED",
                f"no cluster token{where}: this command needs the token a cluster makes in "
                "its data dir at first start (give that cluster's --data-dir)",
            )
        return self.token

    def set_link_fault(self, request: cp_pb2.SetLinkFaultRequest) -> list[cp_pb2.LinkFault]:
        """Merge a fault into a region pair; every fault in force afterwards."""
        response: cp_pb2.SetLinkFaultResponse = self._call(
            self._control_plane().SetLinkFault, request, "control plane", self._admin_metadata()
        )
        return list(response.faults)

    def clear_faults(self, request: cp_pb2.ClearFaultsRequest) -> list[cp_pb2.LinkFault]:
        """Heal one pair (or all); every fault still in force afterwards."""
        response: cp_pb2.ClearFaultsResponse = self._call(
            self._control_plane().ClearFaults, request, "control plane", self._admin_metadata()
        )
        return list(response.faults)

    def list_placements(self) -> list[objects_pb2.Placement]:
        """Every Durable Object placement (owner, standby, epoch) the control plane holds."""
        response: objects_pb2.ListPlacementsResponse = self._call(
            self._control_plane().ListPlacements,
            objects_pb2.ListPlacementsRequest(),
            "control plane",
            self._admin_metadata(),
        )
        return list(response.placements)

    def deploy(self, request: workers_pb2.DeployRequest) -> workers_pb2.DeployResponse:
        """Store a worker version and make it active (or roll back); PoPs load it on their own."""
        response: workers_pb2.DeployResponse = self._call(
            self._control_plane().Deploy, request, "control plane", self._admin_metadata()
        )
        return response

    def list_workers(self) -> list[workers_pb2.WorkerVersion]:
        """Every stored worker version (newest first per worker) and which one is active."""
        response: workers_pb2.ListWorkersResponse = self._call(
            self._control_plane().ListWorkers, workers_pb2.ListWorkersRequest(), "control plane"
        )
        return list(response.versions)

    def pop_statuses(
        self, infos: Iterable[cp_pb2.NodeInfo], timeout_s: float
    ) -> dict[str, pop_pb2.PopStatusResponse | CliError]:
        """Pop.Status of each node at once, each with its own deadline.

        No caller region is sent: this is an operator's look at every node, not a user's
        request, so it pays no emulated delay. A node that does not answer maps to the
        error it gave.
        """
        pending = {
            info.name: pop_pb2_grpc.PopStub(
                self.channel(info.grpc_address, name=info.name, connect=False)
            ).Status.future(pop_pb2.PopStatusRequest(), timeout=timeout_s)
            for info in infos
        }
        results: dict[str, pop_pb2.PopStatusResponse | CliError] = {}
        for name, future in pending.items():
            try:
                results[name] = future.result()
            except grpc.RpcError as error:
                results[name] = CliError.from_rpc(error, name)
        return results

    def origin_http_address(self) -> str:
        """host:port of the origin's HTTP application (auth server, API, pages)."""
        for info in self.list_nodes():
            if info.role == cp_pb2.ROLE_ORIGIN and info.http_address:
                return info.http_address
        raise CliError("UNAVAILABLE", "the control plane knows no origin with an HTTP address")

    def issue_token(self, subject: str, algorithm: str, ttl_s: int) -> str:
        """A JWT signed by the origin's auth server (POST /auth/token with the cluster token)."""
        address = self.origin_http_address()
        token = self.cluster_token()
        body = json.dumps({"sub": subject, "alg": algorithm, "ttl_s": ttl_s}).encode()
        scheme = "https" if self.tls is not None else "http"
        request = urllib.request.Request(
            f"{scheme}://{address}/auth/token",
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        where = f"origin at {address}"
        try:
            context = self.tls.client_ssl_context() if self.tls is not None else None
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=context) as reply:
                answer = json.loads(reply.read())
        except urllib.error.HTTPError as error:
            code = HTTP_STATUS_CODES.get(error.code, "UNKNOWN" if error.code < 500 else "INTERNAL")
            text = _http_error_text(error)
            raise CliError(code, f"HTTP {error.code}: {text} ({where})") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            reason = getattr(error, "reason", error)
            raise CliError("UNAVAILABLE", f"cannot reach the {where}: {reason}") from None
        except json.JSONDecodeError:
            raise CliError("INTERNAL", f"the {where} answered no JSON") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("token"), str):
            raise CliError("INTERNAL", f"the {where} answered no token")
        return str(answer["token"])

    def trigger_scheduled(
        self, http_address: str, worker: str, cron: str, scheduled_time_ms: int
    ) -> str:
        """Run a worker's `scheduled` handler now at one PoP (its `/__scheduled`, with the
        cluster token); the PoP's one-line answer."""
        token = self.cluster_token()
        scheme = "https" if self.tls is not None else "http"
        query = urllib.parse.urlencode({"cron": cron, "time": str(scheduled_time_ms)})
        request = urllib.request.Request(
            f"{scheme}://{http_address}/__scheduled?{query}",
            data=b"",
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Host": f"{worker}.workers.dev"},
        )
        where = f"PoP at {http_address}"
        try:
            context = self.tls.client_ssl_context() if self.tls is not None else None
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=context) as reply:
                return str(reply.read().decode().strip())
        except urllib.error.HTTPError as error:
            code = {404: "NOT_FOUND", 401: "UNAUTHENTICATED"}.get(error.code, "INTERNAL")
            text = _http_error_text(error)
            raise CliError(code, f"HTTP {error.code}: {text} ({where})") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            reason = getattr(error, "reason", error)
            raise CliError("UNAVAILABLE", f"cannot reach the {where}: {reason}") from None

    def node_info(self, name: str) -> cp_pb2.NodeInfo:
        for info in self.list_nodes():
            if info.name == name:
                return info
        raise CliError("NOT_FOUND", f"no node named {name!r} (see `edgectl nodes`)")

    def resolve(
        self,
        *,
        from_region: str | None = None,
        pop: str | None = None,
        origin: bool = False,
        origin_hint: bool = True,
    ) -> Target:
        """Where a call goes: `--origin`, `--pop NODE`, `--from REGION`, or the default.

        The default is what a client next to the origin would get: the PoP nearest the
        topology's origin region. `origin_hint` suggests `--origin` when `--pop` names
        the origin (for commands that have that option).
        """
        if origin or pop:
            if origin:
                infos = [info for info in self.list_nodes() if info.role == cp_pb2.ROLE_ORIGIN]
                if not infos:
                    raise CliError("UNAVAILABLE", "the control plane knows no origin")
                info = infos[0]
            else:
                assert pop is not None
                info = self.node_info(pop)
                if info.role != cp_pb2.ROLE_POP:
                    hint = (
                        " (use --origin)" if origin_hint and info.role == cp_pb2.ROLE_ORIGIN else ""
                    )
                    raise CliError("INVALID_ARGUMENT", f"{pop} is not a PoP{hint}")
            return Target(
                name=info.name,
                role=role_name(info.role),
                region=info.region,
                grpc_address=info.grpc_address,
                caller_region=from_region or info.region,
            )
        region = from_region or self.topology().origin_region
        route = self.route(region)
        return Target(
            name=route.name,
            role="pop",
            region=route.region,
            grpc_address=route.grpc_address,
            caller_region=region,
        )

    # -- KV ----------------------------------------------------------------------------

    def _stub(self, target: Target) -> KvStub:
        channel = self.channel(target.grpc_address, name=target.name)
        if target.role == "origin":
            return origin_pb2_grpc.OriginStub(channel)
        return pop_pb2_grpc.PopStub(channel)

    def _call(
        self,
        method: Callable[..., T],
        request: object,
        where: str,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> T:
        try:
            return method(request, metadata=metadata, timeout=self.timeout_s)
        except grpc.RpcError as error:
            raise CliError.from_rpc(error, where) from None

    def _pop_stub(self, target: Target) -> pop_pb2_grpc.PopStub:
        if target.role != "pop":
            raise CliError("INVALID_ARGUMENT", f"{target.name} is not a PoP")
        return pop_pb2_grpc.PopStub(self.channel(target.grpc_address, name=target.name))

    def _caller_metadata(self, target: Target) -> tuple[tuple[str, str], ...]:
        region = client_metadata(target.caller_region)
        # Stamped per call, last thing before sending: the node counts the time the
        # request spent on loopback against the emulated delay, so that the latency
        # measured here is the emulated RTT rather than RTT + transport.
        return (*region, sent_at_metadata()) if region else region

    def _timed(
        self, target: Target, pick: Callable[[KvStub], Callable[..., T]], request: object
    ) -> Timed[T]:
        # The stub connects first: connecting is not part of the latency.
        return self._timed_method(target, pick(self._stub(target)), request)

    def _timed_method(self, target: Target, method: Callable[..., T], request: object) -> Timed[T]:
        # The clock starts before the stamp: a thread switch between the two (5 ms with
        # the GIL contended) would otherwise be credited by the node yet not timed here,
        # and the round trip measured that much below the emulated one.
        started = time.perf_counter()
        metadata = self._caller_metadata(target)
        response = self._call(method, request, target.name, metadata)
        return Timed(response, (time.perf_counter() - started) * 1000.0)

    def status(self, target: Target) -> Timed[StatusResponse]:
        """Pop.Status or Origin.Status from the target's caller region, timed.

        The cheapest call a node answers: what `probe` times to measure the emulated
        round trip rather than the cost of a handler.
        """
        if target.role == "origin":
            request: object = origin_pb2.OriginStatusRequest()
        else:
            request = pop_pb2.PopStatusRequest()
        timed: Timed[StatusResponse] = self._timed(target, lambda stub: stub.Status, request)
        return timed

    def kv_get(self, target: Target, request: kv_pb2.KvGetRequest) -> Timed[kv_pb2.KvGetResponse]:
        return self._timed(target, lambda stub: stub.KvGet, request)

    def kv_put(self, target: Target, request: kv_pb2.KvPutRequest) -> Timed[kv_pb2.KvPutResponse]:
        if not request.request_id:
            # Idempotency key: a retried write (by gRPC or a later retry policy) commits once.
            request.request_id = new_request_id()
        return self._timed(target, lambda stub: stub.KvPut, request)

    def kv_delete(
        self, target: Target, request: kv_pb2.KvDeleteRequest
    ) -> Timed[kv_pb2.KvDeleteResponse]:
        if not request.request_id:
            request.request_id = new_request_id()
        return self._timed(target, lambda stub: stub.KvDelete, request)

    def kv_list(
        self, target: Target, request: kv_pb2.KvListRequest
    ) -> Timed[kv_pb2.KvListResponse]:
        return self._timed(target, lambda stub: stub.KvList, request)

    # -- SQL databases -----------------------------------------------------------------

    def sql_query(
        self, target: Target, request: sql_pb2.SqlQueryRequest
    ) -> Timed[sql_pb2.SqlQueryResponse]:
        if not request.request_id:
            # A retried write applies once (the origin's log remembers the id).
            request.request_id = new_request_id()
        return self._timed(target, lambda stub: stub.SqlQuery, request)

    def sql_create(self, target: Target, name: str) -> Timed[sql_pb2.SqlCreateResponse]:
        stub = origin_pb2_grpc.OriginStub(self.channel(target.grpc_address, name=target.name))
        return self._timed_method(target, stub.SqlCreate, sql_pb2.SqlCreateRequest(name=name))

    def sql_list(self, target: Target) -> Timed[sql_pb2.SqlListResponse]:
        return self._timed(target, lambda stub: stub.SqlList, sql_pb2.SqlListRequest())

    # -- Durable Objects ---------------------------------------------------------------

    def object_call(
        self, target: Target, request: objects_pb2.ObjectCallRequest
    ) -> Timed[objects_pb2.ObjectCallResponse]:
        if not request.request_id:
            # The object records it with the call's writes: a retried call runs once.
            request.request_id = new_request_id()
        return self._timed_method(target, self._pop_stub(target).ObjectCall, request)

    def object_id(
        self, target: Target, request: objects_pb2.ObjectIdRequest
    ) -> Timed[objects_pb2.ObjectIdResponse]:
        return self._timed_method(target, self._pop_stub(target).ObjectId, request)

    def object_connect(
        self,
        target: Target,
        messages: Iterator[objects_pb2.ObjectClientMessage],
        timeout_s: float | None,
    ) -> Any:
        """An ObjectConnect stream: iterate it for server messages, `cancel()` to leave.

        `messages` is consumed by gRPC's own thread, so it may block waiting for input.
        `timeout_s` None means no deadline (an interactive session lasts as it likes).
        """
        stub = self._pop_stub(target)
        metadata = self._caller_metadata(target)
        return stub.ObjectConnect(messages, metadata=metadata, timeout=timeout_s)

    def kv_list_pages(
        self, target: Target, request: kv_pb2.KvListRequest
    ) -> Iterator[Timed[kv_pb2.KvListResponse]]:
        """Every page from `request.cursor` on, following cursors until list_complete."""
        while True:
            page = self.kv_list(target, request)
            yield page
            if page.response.list_complete or not page.response.cursor:
                return
            request.cursor = page.response.cursor


def _http_error_text(error: urllib.error.HTTPError) -> str:
    """The `error` field of a JSON error body, else its text (short)."""
    try:
        raw = error.read()
    except OSError:
        return str(error.reason)
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return raw.decode("utf-8", errors="replace")[:200].strip() or str(error.reason)
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return str(body)[:200]


def value_text(value: bytes) -> tuple[str, str]:
    """(text, encoding) of a value for JSON: UTF-8 when it decodes, else base64."""
    try:
        return value.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(value).decode("ascii"), "base64"


# -- live view sampling ----------------------------------------------------------------


@dataclass(frozen=True)
class NodeProbe:
    """One successful look at a node (fields are None when that part did not answer)."""

    at: float
    seq: int | None = None
    head_seq: int | None = None
    lag_s: float | None = None
    replicating: bool | None = None
    request_count: float | None = None
    # Worker versions the PoP serves now.
    workers: int | None = None
    latency_buckets: tuple[tuple[float, float], ...] = ()
    # (namespace, id) -> calls run so far, of the objects the PoP owns and names.
    object_calls: Mapping[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeSample:
    """A row of the live view."""

    name: str
    role: str
    region: str
    pid: int
    alive: bool
    healthy: bool | None
    seq: int | None
    head_seq: int | None
    lag_s: float | None
    replicating: bool | None
    requests_per_s: float | None
    # The newest probe did not finish in time: the values are from an earlier one.
    stale: bool
    # Where curl reaches this node's HTTP ingress (PoPs) or application (origin).
    http_address: str = ""
    # Worker versions loaded (PoPs; None when unknown).
    workers: int | None = None
    # Latency quantiles of the requests served since the previous sample (ms).
    p50_ms: float | None = None
    p99_ms: float | None = None
    # (namespace, id) -> calls/s since the previous sample, of the objects it owns.
    object_rates: Mapping[tuple[str, str], float] = field(default_factory=dict)
    # Since the previous sample, in % of one core: CPU its threads used, and time they
    # were ready to run but waited for a CPU (edgepop/host_cpu.py). None if unknown.
    cpu_percent: float | None = None
    cpu_wait_percent: float | None = None


@dataclass(frozen=True)
class RequestStats:
    """Requests served so far and their latency histogram (cumulative, by upper bound)."""

    count: float
    buckets: tuple[tuple[float, float], ...] = ()


def request_stats(metrics_text: str) -> RequestStats:
    """Requests served so far: the sum of edge_request_duration_seconds over every
    service and method, count and buckets.

    The live view's own status polls are left out so that its presence does not show
    up as traffic.
    """
    total = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != REQUEST_HISTOGRAM:
            continue
        for sample in family.samples:
            if (sample.labels.get("service"), sample.labels.get("method")) in MONITOR_METHODS:
                continue
            if sample.name == REQUEST_COUNT_SAMPLE:
                total += sample.value
            elif sample.name == REQUEST_BUCKET_SAMPLE:
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return RequestStats(total, tuple(sorted(buckets.items())))


def quantile_from_buckets(
    previous: tuple[tuple[float, float], ...],
    current: tuple[tuple[float, float], ...],
    quantile: float,
) -> float | None:
    """The `quantile` of the observations between two cumulative histograms, in seconds
    (linear within the bucket, as Prometheus's histogram_quantile); None without any."""
    before = dict(previous)
    deltas = [(bound, count - before.get(bound, 0.0)) for bound, count in current]
    if not deltas or deltas[-1][1] <= 0 or any(delta < 0 for _, delta in deltas):
        return None
    rank = quantile * deltas[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, cumulative in deltas:
        if cumulative >= rank:
            if bound == float("inf"):
                return lower_bound
            width = cumulative - lower_count
            share = (rank - lower_count) / width if width > 0 else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, cumulative
    return None


def rate_per_s(previous: tuple[float, float] | None, current: tuple[float, float]) -> float | None:
    """Rate between two (time, counter) samples; a counter that went down was restarted."""
    if previous is None:
        return None
    elapsed = current[0] - previous[0]
    if elapsed <= 0:
        return None
    delta = current[1] - previous[1]
    if delta < 0:
        delta = current[1]
    return delta / elapsed


def object_rates(previous: NodeProbe | None, current: NodeProbe) -> dict[tuple[str, str], float]:
    """Calls/s of each object between two probes of its owner. An object first named
    now has no rate yet; one whose count went down was activated again (from 0)."""
    if previous is None:
        return {}
    elapsed = current.at - previous.at
    if elapsed <= 0:
        return {}
    rates = {}
    for key, calls in current.object_calls.items():
        before = previous.object_calls.get(key)
        if before is not None:
            rates[key] = (calls - before if calls >= before else calls) / elapsed
    return rates


def scrape(
    metrics_address: str, timeout_s: float = PROBE_TIMEOUT_S, samples: Sequence[str] = ()
) -> str:
    """A node's /metrics page; with `samples` (sample names, e.g. `x_count`), only those:
    prometheus_client's `name[]` filter, which generates nothing else (a whole page is
    most of what a once-a-second look costs the node)."""
    query = "?" + urllib.parse.urlencode([("name[]", name) for name in samples]) if samples else ""
    url = f"http://{metrics_address}/metrics{query}"
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:
        text: bytes = reply.read()
    return text.decode("utf-8", errors="replace")


@dataclass
class _NodeTrack:
    pending: futures.Future[NodeProbe] | None = None
    last: NodeProbe | None = None
    last_count: tuple[float, float] | None = None
    last_buckets: tuple[tuple[float, float], ...] = ()
    rate: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    object_rates: dict[tuple[str, str], float] = field(default_factory=dict)
    stale: bool = False
    # This host's view of the node's process (its pid: a restart starts afresh).
    cpu: ProcessCpu | None = None
    last_cpu: tuple[float, CpuTimes] | None = None
    cpu_percent: float | None = None
    cpu_wait_percent: float | None = None

    def sample_cpu(self, pid: int) -> None:
        """CPU used and waited for since the last call, from /proc (a local node)."""
        if self.cpu is None or self.cpu.pid != pid:
            self.cpu, self.last_cpu = ProcessCpu(pid), None
        times = self.cpu.read()
        now = time.monotonic()
        if times is None:
            self.cpu_percent = self.cpu_wait_percent = None
            return
        if self.last_cpu is not None and now > self.last_cpu[0]:
            used = times - self.last_cpu[1]
            elapsed = now - self.last_cpu[0]
            self.cpu_percent = 100 * used.ran_s / elapsed
            self.cpu_wait_percent = 100 * used.waited_s / elapsed
        self.last_cpu = (now, times)


@dataclass
class ClusterMonitor:
    """Samples every node of a cluster for the live view; call `sample()` once a second."""

    cluster: Cluster
    executor: futures.ThreadPoolExecutor
    probe_timeout_s: float = PROBE_TIMEOUT_S
    _channels: dict[str, grpc.Channel] = field(default_factory=dict)
    _tracks: dict[str, _NodeTrack] = field(default_factory=dict)
    _health_pending: futures.Future[dict[str, bool]] | None = None
    _health: dict[str, bool] | None = None

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def _channel(self, address: str) -> grpc.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self.cluster.channel(address, CHANNEL_OPTIONS)
            self._channels[address] = channel
        return channel

    def _list_health(self, channel: grpc.Channel) -> dict[str, bool]:
        stub = cp_grpc.ControlPlaneStub(channel)
        response = stub.ListNodes(cp_pb2.ListNodesRequest(), timeout=self.probe_timeout_s)
        return {info.name: info.healthy for info in response.nodes}

    def _probe(self, node: NodeState, channel: grpc.Channel) -> NodeProbe:
        seq = head = None
        lag = None
        replicating = None
        count = None
        workers = None
        buckets: tuple[tuple[float, float], ...] = ()
        requests: node_pb2.RequestStats | None = None
        object_calls: dict[tuple[str, str], int] = {}
        try:
            if node.role == "pop":
                status = pop_pb2_grpc.PopStub(channel).Status(
                    pop_pb2.PopStatusRequest(), timeout=self.probe_timeout_s
                )
                seq, head = status.applied_seq, status.origin_head_seq
                lag, replicating = status.lag_seconds, status.replicating
                workers = len(status.workers)
                requests = status.requests
                object_calls = {(item.namespace, item.id): item.calls for item in status.objects}
            elif node.role == "origin":
                origin = origin_pb2_grpc.OriginStub(channel).Status(
                    origin_pb2.OriginStatusRequest(), timeout=self.probe_timeout_s
                )
                seq = head = origin.head_seq
                requests = origin.requests
        except grpc.RpcError:
            pass
        if requests is not None and requests.bucket_bounds:
            # Status says it (no /metrics page to generate and parse: a third of the cost).
            count = requests.count
            buckets = tuple(zip(requests.bucket_bounds, requests.bucket_counts, strict=True))
        elif node.role == "control_plane":
            # The control plane has no Status: its request histogram from /metrics.
            with contextlib.suppress(OSError, ValueError):
                text = scrape(node.metrics_address, self.probe_timeout_s, REQUEST_SAMPLES)
                stats = request_stats(text)
                count, buckets = stats.count, stats.buckets
        return NodeProbe(
            time.monotonic(), seq, head, lag, replicating, count, workers, buckets, object_calls
        )

    def sample(self) -> list[NodeSample]:
        """Start the probes that are not still running, wait briefly, return every row."""
        self.cluster.reload()
        alive = {name: pid_alive(node.pid) for name, node in self.cluster.nodes.items()}
        control_plane = self.cluster.control_plane
        if self._health_pending is None and control_plane.grpc_address:
            self._health_pending = self.executor.submit(
                self._list_health, self._channel(control_plane.grpc_address)
            )
        waiting: list[futures.Future[Any]] = []
        for name, node in self.cluster.nodes.items():
            track = self._tracks.setdefault(name, _NodeTrack())
            if track.pending is None and alive[name] and node.grpc_address:
                channel = self._channel(node.grpc_address)
                track.pending = self.executor.submit(self._probe, node, channel)
            if track.pending is not None:
                waiting.append(track.pending)
        if self._health_pending is not None:
            waiting.append(self._health_pending)
        futures.wait(waiting, timeout=self.probe_timeout_s)

        if self._health_pending is not None and self._health_pending.done():
            try:
                self._health = self._health_pending.result()
            except grpc.RpcError:
                self._health = None
            self._health_pending = None

        rows = []
        for name, node in self.cluster.nodes.items():
            track = self._tracks[name]
            if track.pending is not None and track.pending.done():
                probe = track.pending.result()
                track.pending = None
                track.object_rates = object_rates(track.last, probe)
                track.last, track.stale = probe, False
                if probe.request_count is not None:
                    current = (probe.at, probe.request_count)
                    track.rate = rate_per_s(track.last_count, current)
                    track.last_count = current
                    if track.last_buckets:
                        p50 = quantile_from_buckets(track.last_buckets, probe.latency_buckets, 0.5)
                        p99 = quantile_from_buckets(track.last_buckets, probe.latency_buckets, 0.99)
                        track.p50_ms = None if p50 is None else p50 * 1e3
                        track.p99_ms = None if p99 is None else p99 * 1e3
                    track.last_buckets = probe.latency_buckets
            elif track.pending is not None:
                track.stale = True
            if not alive[name]:
                # A restarted node starts its counters afresh; forget the old ones.
                self._tracks[name] = track = _NodeTrack()
            elif node.pid:
                track.sample_cpu(node.pid)
            last = track.last
            rows.append(
                NodeSample(
                    name=name,
                    role=node.role,
                    region=node.region,
                    pid=node.pid if alive[name] else 0,
                    alive=alive[name],
                    healthy=(
                        alive[name] and self._health.get(name, False)
                        if self._health is not None
                        else None
                    ),
                    seq=last.seq if last else None,
                    head_seq=last.head_seq if last else None,
                    lag_s=last.lag_s if last else None,
                    replicating=last.replicating if last else None,
                    requests_per_s=track.rate,
                    stale=track.stale,
                    http_address=node.http_address,
                    workers=last.workers if last else None,
                    p50_ms=track.p50_ms,
                    p99_ms=track.p99_ms,
                    object_rates=track.object_rates,
                    cpu_percent=track.cpu_percent,
                    cpu_wait_percent=track.cpu_wait_percent,
                )
            )
        return rows
