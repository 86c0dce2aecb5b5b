"""gRPC wiring shared by every role: server options, the `rpc` decorator, client channels.

Ports and channels follow the process's TLS setting (`edgepop.tls`): with TLS on, a
server port requires a client certificate from the cluster CA, and a channel presents
this node's certificate and verifies the server's. The cluster token is checked on top.

The `rpc` decorator is the single place where a call is authenticated (internal
methods), delayed by the network emulator, timed into `edge_request_duration_seconds`,
and where domain errors become status codes (edgepop.errors). Servicer methods stay
plain business logic.

A request whose bytes do not parse as its message is the client's error: gRPC itself
would answer UNKNOWN (and log a traceback per call). Every server built here parses
edge.v1 requests leniently (`LenientRegistration`), and the decorator refuses what did not
parse with INVALID_ARGUMENT before anything else runs.
"""

from __future__ import annotations

import functools
import hmac
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgepop.errors import (
    REASON_KEY,
    EdgeError,
    InvalidArgumentError,
    OverloadedError,
    UnauthenticatedError,
    status_of,
)
from edgepop.limits import CALLS_IN_FLIGHT_MAX, MESSAGE_BYTES_MAX
from edgepop.metrics import NodeMetrics
from edgepop.netem import (
    NODE_HEADER,
    REGION_HEADER,
    Caller,
    Leg,
    NetworkEmulator,
    caller_from_metadata,
    reply_credit_s,
)
from edgepop.tls import TlsConfig, process_tls

log = logging.getLogger(__name__)

AUTHORIZATION_HEADER = "authorization"

MESSAGE_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
    ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
]
# HTTP/2 flow control with a fixed window instead of one sized by BDP probes. With
# probing on, a transport that receives data pings its peer to measure the link's
# bandwidth-delay product: on an idle cluster the stream and node heartbeats set off a
# ping and its ack about once a second per connection, each waking two processes (~15%
# of an idle 32-PoP cluster's CPU, docs/ARCHITECTURE.md). Between processes on one
# machine that product is small, and 8 MiB holds a whole replication batch (at most
# 4 MiB); larger messages flow in window-sized steps. Over a real link it caps one
# stream at 8 MiB per round trip (~390 Mbit/s at 170 ms).
FLOW_CONTROL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 8 * 1024 * 1024),
]
SERVER_OPTIONS: list[tuple[str, Any]] = [
    *MESSAGE_OPTIONS,
    *FLOW_CONTROL_OPTIONS,
    # Two servers must never share a port silently.
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    # Calls that arrived but that the event loop has not taken yet wait in gRPC's own
    # queue. Past 1,000 of them (its default) gRPC drops new ones at random, and their
    # client sees only CANCELLED, with no reason. A busy node's backlog is bounded, with
    # a status that says so, by `calls_in_flight_max` once the loop takes them; this
    # bound only keeps memory finite.
    ("grpc.server.max_pending_requests", 100_000),
    ("grpc.server.max_pending_requests_hard_limit", 100_000),
]
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    *MESSAGE_OPTIONS,
    *FLOW_CONTROL_OPTIONS,
    # Detect a dead peer on long streams; reconnect quickly after a restart.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    # Low: a node must see a restarted peer within a fraction of the 2 s object lease (a
    # heartbeat waiting for the channel renews it only once the channel reconnects).
    ("grpc.max_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 100),
]


@dataclass
class RpcEnv:
    """What the `rpc` decorator needs from the node serving a call."""

    service: str
    metrics: NodeMetrics
    netem: NetworkEmulator
    token: str
    # Calls (unary and streams) inside this node's handlers now, and the most it takes:
    # beyond that a new call is refused at once with RESOURCE_EXHAUSTED (`_admit`).
    calls_in_flight: int = 0
    calls_in_flight_max: int = CALLS_IN_FLIGHT_MAX


class HasRpcEnv(Protocol):
    rpc_env: RpcEnv


S = TypeVar("S", bound=HasRpcEnv)
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def _admit(env: RpcEnv) -> None:
    """Refuse a call that arrives with the node already serving its most calls at once
    (this one counted): an overloaded node sheds load with a status the client can act
    on, instead of a backlog, and its latency, without end."""
    if env.calls_in_flight > env.calls_in_flight_max:
        raise OverloadedError(
            f"{env.service} is overloaded: it serves at most {env.calls_in_flight_max:,} "
            "calls at once; retry with backoff"
        )


def _check_token(env: RpcEnv, metadata: Sequence[tuple[str, str | bytes]]) -> None:
    for key, value in metadata:
        if key == AUTHORIZATION_HEADER:
            text = value if isinstance(value, str) else value.decode()
            scheme, _, presented = text.partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                presented.strip().encode(), env.token.encode()
            ):
                return
            break
    raise UnauthenticatedError("this method needs the cluster token (authorization: Bearer …)")


# -- requests that do not parse ---------------------------------------------------------------


@dataclass(frozen=True)
class MalformedRequest:
    """Stands in for a request message whose bytes did not parse; `rpc` refuses it."""

    message: str


def lenient(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """`deserializer`, answering a MalformedRequest where it would raise."""

    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError as error:
            return MalformedRequest(f"malformed request: {error}")

    return parse


class LenientRegistration:
    """Register servicers so that their requests parse leniently: bad bytes reach `rpc`
    as MalformedRequest (INVALID_ARGUMENT) instead of gRPC's UNKNOWN.

    Use as the `server` argument of a generated `add_XServicer_to_server` (the node's
    lifecycle passes it to `add_services`). The deserializers are wrapped once, at
    registration: nothing runs per call, unlike a server interceptor.
    """

    def __init__(self, server: Any) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self._server.add_registered_method_handlers(
            service,
            {
                name: handler._replace(request_deserializer=lenient(handler.request_deserializer))
                if handler.request_deserializer is not None
                else handler
                for name, handler in handlers.items()
            },
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


def _refuse_malformed(request: Any) -> None:
    if isinstance(request, MalformedRequest):
        raise InvalidArgumentError(request.message)


class _ClientStream:
    """A bidi call's request stream that ends at the first message that did not parse.

    The first one is refused at once; after that the handler sees the client's stream
    end (sessions close cleanly, proxied ones too) and the call then ends with
    INVALID_ARGUMENT naming the bad message.
    """

    def __init__(self, messages: AsyncIterator[Any]) -> None:
        self._messages = messages
        self.malformed: MalformedRequest | None = None

    async def __aiter__(self) -> AsyncIterator[Any]:
        first = True
        async for message in self._messages:
            if isinstance(message, MalformedRequest):
                if first:
                    raise InvalidArgumentError(message.message)
                self.malformed = message
                return
            first = False
            yield message


async def _abort(context: grpc.aio.ServicerContext, error: BaseException) -> None:
    code, message = status_of(error)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("unexpected error in handler", exc_info=error)
    reason = error.reason if isinstance(error, EdgeError) else ""
    if reason:
        await context.abort(code, message, trailing_metadata=((REASON_KEY, reason),))
    await context.abort(code, message)


async def _arrive(
    env: RpcEnv, context: grpc.aio.ServicerContext, internal: bool, arrived_at: float
) -> tuple[Caller | None, Leg | None, Leg | None]:
    """Every call's way in, unary or streaming, in one order: the request crosses the
    inbound leg first (a partition holds it, its delay counts from when the caller sent
    it), then the cluster token is checked, as a real server sees a request only once it
    arrived. Returns the caller and the (inbound, outbound) legs (None without a caller).
    """
    metadata = context.invocation_metadata() or ()
    caller = caller_from_metadata(metadata)
    inbound = outbound = None
    if caller is not None:
        inbound, outbound = env.netem.legs(caller)
        await env.netem.cross(inbound, arrived_at - caller.transit_s, context.time_remaining())
    if internal:
        _check_token(env, metadata)
    return caller, inbound, outbound


class _Answer:
    """A streaming call's way out (a unary call's does the same, written out in `rpc`): a
    domain error becomes its status (and reason), any other exception INTERNAL, an abort
    stays ABORTED and a cancelled call (the client gone) CANCELLED; the call's duration is
    observed under the code it ended with (`_code_of`)."""

    __slots__ = ("context", "env", "name", "started")

    def __init__(self, env: RpcEnv, name: str, context: grpc.aio.ServicerContext) -> None:
        self.env = env
        self.name = name
        self.context = context
        self.started = time.perf_counter()

    async def __aenter__(self) -> None:
        self.env.calls_in_flight += 1

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _tb: object
    ) -> bool:
        self.env.calls_in_flight -= 1
        code = "OK" if error is None else _code_of(error)
        try:
            if error is not None and code not in _NOT_ABORTED:
                await _abort(self.context, error)
            return False  # the error, if any, goes on (an abort raises its own)
        finally:
            self.env.metrics.request(self.env.service, self.name, code).observe(
                time.perf_counter() - self.started
            )


# Codes of calls that ended without an answer of ours (nothing to abort with).
_NOT_ABORTED = frozenset({"ABORTED", "CANCELLED"})


def _code_of(error: BaseException) -> str:
    """The status code a call ending with `error` is counted under."""
    if isinstance(error, EdgeError):
        return str(error.code.name)
    if isinstance(error, grpc.aio.AbortError | GeneratorExit):
        return "ABORTED"
    if isinstance(error, Exception):
        return "INTERNAL"
    return "CANCELLED"  # asyncio.CancelledError: the client went away


def rpc(
    *, internal: bool = False, bidi: bool = False, with_caller: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a servicer method (unary coroutine, or streaming async generator).

    With `bidi`, the request is a stream too: each client message crosses the inbound
    leg with its own delay, as each server message crosses the outbound one. With
    `with_caller` (unary), the method gets the caller the decorator read from the
    metadata as a fourth argument (None without one), instead of reading it again.
    """

    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        name = method.__name__
        if inspect.isasyncgenfunction(method):
            stream_method: Callable[[Any, Any, grpc.aio.ServicerContext], AsyncIterator[Any]]
            stream_method = method

            @functools.wraps(method)
            async def stream(
                self: HasRpcEnv, request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                env = self.rpc_env
                started_mono = time.monotonic()
                client_stream: _ClientStream | None = None
                async with _Answer(env, name, context):
                    _admit(env)
                    if bidi:
                        client_stream = _ClientStream(request)
                        request = aiter(client_stream)
                    else:
                        _refuse_malformed(request)
                    _, inbound, outbound = await _arrive(env, context, internal, started_mono)
                    if inbound is not None and outbound is not None:
                        if bidi:
                            request = env.netem.delay_stream(inbound, request)
                        messages = env.netem.delay_stream(
                            outbound, stream_method(self, request, context)
                        )
                    else:
                        messages = stream_method(self, request, context)
                    async for message in messages:
                        yield message
                    if client_stream is not None and client_stream.malformed is not None:
                        _refuse_malformed(client_stream.malformed)

            return stream

        unary_method: Callable[..., Awaitable[Any]] = method

        @functools.wraps(method)
        async def unary(self: HasRpcEnv, request: Any, context: grpc.aio.ServicerContext) -> Any:
            # `_arrive` and `_Answer` written out: this runs for every call at every node,
            # and each coroutine and context manager it makes costs CPU per call.
            env = self.rpc_env
            started, arrived_at = time.perf_counter(), time.monotonic()
            code = "OK"
            env.calls_in_flight += 1
            try:
                _admit(env)
                if type(request) is MalformedRequest:
                    raise InvalidArgumentError(request.message)
                metadata = context.invocation_metadata() or ()
                caller = caller_from_metadata(metadata)
                extra = (caller,) if with_caller else ()
                if caller is None:
                    if internal:
                        _check_token(env, metadata)
                    return await unary_method(self, request, context, *extra)
                inbound, outbound = env.netem.legs(caller)
                await env.netem.cross(
                    inbound, arrived_at - caller.transit_s, context.time_remaining()
                )
                if internal:
                    _check_token(env, metadata)
                try:
                    return await unary_method(self, request, context, *extra)
                finally:
                    await env.netem.cross(
                        outbound,
                        time.monotonic() - reply_credit_s(caller),
                        context.time_remaining(),
                    )
            except BaseException as error:
                code = _code_of(error)
                if code not in _NOT_ABORTED:
                    await _abort(context, error)
                raise
            finally:
                env.calls_in_flight -= 1
                env.metrics.request(env.service, name, code).observe(time.perf_counter() - started)

        return unary

    return decorate


def build_server() -> grpc.aio.Server:
    return grpc.aio.server(options=SERVER_OPTIONS)


def add_health_and_reflection(
    server: grpc.aio.Server, service_names: Sequence[str]
) -> health.aio.HealthServicer:
    """Standard health service and server reflection: open, no token, no delay."""
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    return health_servicer


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def add_port(server: grpc.aio.Server, address: str, tls: TlsConfig | None) -> int:
    """Bind `address` (host:port, port 0 = any): mutual TLS when `tls` is given.

    Returns the bound port (0 when the bind failed, as grpc reports it).
    """
    if tls is None:
        return int(server.add_insecure_port(address))
    return int(server.add_secure_port(address, tls.server_credentials))


def channel(address: str) -> grpc.aio.Channel:
    """A channel to another node, with this process's TLS identity when TLS is on."""
    tls = process_tls()
    if tls is None:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(address, tls.channel_credentials, options=CHANNEL_OPTIONS)


def node_metadata(node: str, region: str, token: str | None = None) -> tuple[tuple[str, str], ...]:
    """Metadata a node sends on its calls to other nodes (pays the emulated delay)."""
    metadata: list[tuple[str, str]] = [(REGION_HEADER, region), (NODE_HEADER, node)]
    if token:
        metadata.append((AUTHORIZATION_HEADER, f"Bearer {token}"))
    return tuple(metadata)


def client_metadata(
    region: str | None = None, token: str | None = None
) -> tuple[tuple[str, str], ...]:
    """Metadata of a (simulated) client call: its location and, for admin calls, the token."""
    metadata: list[tuple[str, str]] = []
    if region:
        metadata.append((REGION_HEADER, region))
    if token:
        metadata.append((AUTHORIZATION_HEADER, f"Bearer {token}"))
    return tuple(metadata)


def _serialize_or_pass(message: Any) -> bytes:
    return message if isinstance(message, bytes) else bytes(message.SerializeToString())


class PreEncodedStreams:
    """Register a servicer so that some streaming methods may yield pre-encoded bytes.

    Use as the `server` argument of a generated `add_XServicer_to_server`: for the named
    methods the response serializer passes `bytes` through unchanged (and serializes
    messages as usual). The origin encodes each range of its log once and sends the same
    bytes to every subscriber, instead of decoding and encoding it per subscriber.
    """

    def __init__(self, server: grpc.aio.Server, methods: frozenset[str]) -> None:
        self._server = server
        self._methods = methods

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        # Registered handlers take precedence over generic ones for the same method.
        patched = {}
        for name, handler in handlers.items():
            if name in self._methods:
                handler = grpc.unary_stream_rpc_method_handler(
                    handler.unary_stream,
                    request_deserializer=handler.request_deserializer,
                    response_serializer=_serialize_or_pass,
                )
            patched[name] = handler
        self._server.add_registered_method_handlers(service, patched)
