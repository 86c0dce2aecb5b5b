"""Malformed HTTP at a PoP's ingress (issue 10, item 5): raw bytes on fresh connections.

Requests come from `tests.integration.fuzz.http_requests`: bad request lines, unknown
methods, HTTP/0.9 and bogus versions, headers past the 32 KiB / 256-field limits and past
the parser's, broken chunked encoding, Content-Length mismatches, pipelined garbage, and
bytes that are not HTTP at all. Each exchange must end with well-formed responses (a
4xx for what is broken, 505 for a version other than HTTP/1.x, never another 5xx: the
worker answers every request that reaches it) or a closed connection; none may hang once
the client has said it is done (half-close).

Slow clients are bounded: a connection that never finishes its headers, or stops sending
its body, is answered or closed within the ingress's bound (`REQUEST_HEADERS_TIMEOUT_S`,
`BODY_TIMEOUT_S`). They run in the background while the rest fuzzes, and are checked last.

At the end the PoP still runs, is healthy and serves a normal request. A dedicated small
cluster with delay emulation off; hypothesis derandomized without a database.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st

from edge.v1 import control_plane_pb2_grpc, pop_pb2, pop_pb2_grpc, workers_pb2
from edgectl.launcher import Cluster
from pop_node.workers.ingress import BODY_TIMEOUT_S, REQUEST_HEADERS_TIMEOUT_S
from tests.conftest import _make_factory, poll_until
from tests.integration.fuzz import (
    FUZZ_HOST,
    HTTP_WORKER_PY,
    HTTP_WORKER_YAML,
    HttpRequest,
    http_requests,
    reseeded,
)

pytestmark = pytest.mark.cluster

HTTP_TOPOLOGY: dict[str, Any] = {
    "emulate_delay": False,
    "regions": [{"name": "us-east-1"}, {"name": "tokyo", "pop_nodes": 1}],
}
POP = "tokyo-1"
BATCH_EXCHANGES = 25
EXAMPLES = 30
# After the last byte sent: how long a server may think before we say we are done
# (half-close), and how long it then has to answer or close.
ANSWER_WAIT_S = 0.4
EOF_WAIT_S = 3.0
# A loaded 2-core machine fires timers late; the ingress's own bound is the claim.
SLOW_SLACK_S = 3.0

HYPOTHESIS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    verbosity=Verbosity.quiet,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})(?: [^\r\n]*)?\r\n")


# -- one exchange --------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    body: bytes


@dataclass
class Exchange:
    """What came back on one connection."""

    responses: list[Response] = field(default_factory=list)
    garbled: bytes = b""  # bytes after the last response that are not one
    closed: bool = False  # the server closed the connection
    hung: bool = False  # neither an answer nor a close after our half-close
    raw: bytes = b""


def parse_responses(raw: bytes) -> tuple[list[Response], bytes]:
    """The complete responses in `raw` and what is left that is not one."""
    responses = []
    rest = raw
    while rest:
        match = _STATUS_LINE.match(rest)
        head_end = rest.find(b"\r\n\r\n")
        if match is None or head_end < 0:
            break
        headers = {
            name.strip().lower(): value.strip()
            for line in rest[match.end() : head_end].split(b"\r\n")
            if b":" in line
            for name, value in [line.split(b":", 1)]
        }
        body_start = head_end + 4
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body, consumed = _dechunk(rest[body_start:])
            if consumed < 0:
                break
            rest = rest[body_start + consumed :]
        else:
            length = int(headers.get(b"content-length", b"0"))
            if len(rest) < body_start + length:
                # A complete head and a short body: the server answered, then closed while
                # we were still sending, and TCP's reset dropped the rest of the answer
                # (an answer to a 1 MiB request line, say). Its status still counts.
                responses.append(Response(int(match.group(1)), rest[body_start:]))
                return responses, b""
            body = rest[body_start : body_start + length]
            rest = rest[body_start + length :]
        responses.append(Response(int(match.group(1)), body))
    return responses, rest


def _dechunk(data: bytes) -> tuple[bytes, int]:
    body, offset = b"", 0
    while True:
        line_end = data.find(b"\r\n", offset)
        if line_end < 0:
            return b"", -1
        size = int(data[offset:line_end].split(b";")[0], 16)
        start = line_end + 2
        if size == 0:
            trailer_end = data.find(b"\r\n", start)
            return (body, trailer_end + 2) if trailer_end >= 0 else (b"", -1)
        if len(data) < start + size + 2:
            return b"", -1
        body += data[start : start + size]
        offset = start + size + 2


async def exchange(address: str, data: bytes) -> Exchange:
    """Send `data`, wait for answers, say we are done (half-close), read until closed."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    received = b""
    result = Exchange()
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
        wait, half_closed = ANSWER_WAIT_S, False
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), wait)
            except TimeoutError:
                if half_closed:
                    result.hung = True
                    break
                with contextlib.suppress(ConnectionError, OSError):
                    writer.write_eof()
                wait, half_closed = EOF_WAIT_S, True
                continue
            except ConnectionError:
                result.closed = True
                break
            if not chunk:
                result.closed = True
                break
            received += chunk
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    result.raw = received
    result.responses, result.garbled = parse_responses(received)
    return result


def problems(request: HttpRequest, result: Exchange) -> list[str]:
    found = []
    if result.hung:
        found.append("no answer and no close, even after the client's half-close")
    if result.garbled:
        found.append(f"bytes that are not a response: {result.garbled[:200]!r}")
    for response in result.responses:
        # 505 is the answer to an HTTP version other than 1.0 / 1.1; any other 5xx means
        # the ingress failed (the worker answers every request that reaches it).
        if response.status >= 500 and response.status != 505:
            found.append(f"{response.status}: {response.body[:200]!r}")
    if not result.responses and not result.closed:
        found.append("neither an answer nor a closed connection")
    return found


class HttpDriver:
    """Runs exchanges concurrently on its own event loop."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.loop = asyncio.new_event_loop()
        self.sent = 0
        self.statuses: dict[int, int] = {}

    def run(self, batch: list[HttpRequest]) -> list[Exchange]:
        async def send_all() -> list[Exchange]:
            return await asyncio.gather(*(exchange(self.address, r.data) for r in batch))

        results = self.loop.run_until_complete(send_all())
        self.sent += len(batch)
        for result in results:
            for response in result.responses:
                self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
        return results

    def close(self) -> None:
        self.loop.close()


# -- slow clients ---------------------------------------------------------------------------------


@dataclass
class SlowClient:
    """A client that starts a request and stops (or trickles), and when it was cut off."""

    name: str
    first: bytes
    trickle: bytes = b""  # sent one byte at a time, every `trickle_every_s`
    trickle_every_s: float = 1.0
    bound_s: float = 0.0
    answer: bytes = b""  # how the answer must start ("" = a close will do)
    ended_after_s: float | None = None
    received: bytes = b""


def slow_clients() -> list[SlowClient]:
    host = FUZZ_HOST.encode()
    headers_bound = REQUEST_HEADERS_TIMEOUT_S
    body_bound = BODY_TIMEOUT_S
    return [
        SlowClient("connects and sends nothing", b"", bound_s=headers_bound),
        SlowClient("half a request line", b"GET /slow", bound_s=headers_bound),
        SlowClient(
            "headers never finished",
            b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nX-A: ",
            bound_s=headers_bound,
        ),
        SlowClient(
            "headers trickled a byte a second",
            b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n",
            trickle=b"X-Slow: " + b"s" * 10_000,
            bound_s=headers_bound,
        ),
        SlowClient(
            "body stopped after 10 of 1000 bytes",
            b"POST / HTTP/1.1\r\nHost: " + host + b"\r\nContent-Length: 1000\r\n\r\n" + b"b" * 10,
            bound_s=body_bound,
            answer=b"HTTP/1.1 408 ",
        ),
        SlowClient(
            "body trickled a byte every half second",
            b"POST / HTTP/1.1\r\nHost: " + host + b"\r\nContent-Length: 100000\r\n\r\n",
            trickle=b"b" * 100_000,
            trickle_every_s=0.5,
            bound_s=body_bound,
            answer=b"HTTP/1.1 408 ",
        ),
        SlowClient(
            "chunked body stopped mid-chunk",
            b"POST / HTTP/1.1\r\nHost: " + host + b"\r\nTransfer-Encoding: chunked\r\n\r\na\r\nabc",
            bound_s=body_bound,
            answer=b"HTTP/1.1 408 ",
        ),
    ]


async def _run_slow(address: str, client: SlowClient, give_up_s: float) -> None:
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError, OSError):
            for byte in client.trickle:
                await asyncio.sleep(client.trickle_every_s)
                writer.write(bytes([byte]))
                await writer.drain()

    writer.write(client.first)
    await writer.drain()
    sender = asyncio.ensure_future(trickle())
    try:
        # The first byte back (an answer such as 408) or the close ends the wait.
        with contextlib.suppress(TimeoutError, ConnectionError):
            client.received = await asyncio.wait_for(reader.read(65536), give_up_s)
            client.ended_after_s = time.monotonic() - started
    finally:
        sender.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


class SlowClients(threading.Thread):
    """Every slow client at once, on a thread of its own, while the rest of the module runs."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True, name="slow-clients")
        self.address = address
        self.clients = slow_clients()

    def run(self) -> None:
        give_up_s = max(c.bound_s for c in self.clients) + SLOW_SLACK_S + 5.0

        async def all_clients() -> None:
            await asyncio.gather(*(_run_slow(self.address, c, give_up_s) for c in self.clients))

        asyncio.run(all_clients())


# -- the cluster -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started: list[Cluster] = []
    # Plaintext whatever the session's TLS setting: the fuzz speaks raw HTTP/1.1 bytes.
    made = _make_factory(Path(tmp_path_factory.mktemp("fuzz-http")), started)(
        HTTP_TOPOLOGY, tls=False
    )
    bundle = workers_pb2.WorkerBundle(
        files=[
            workers_pb2.WorkerFile(path="worker.yaml", content=HTTP_WORKER_YAML.encode()),
            workers_pb2.WorkerFile(path="worker.py", content=HTTP_WORKER_PY),
        ]
    )
    with grpc.insecure_channel(made.control_plane.grpc_address) as channel:
        control_plane_pb2_grpc.ControlPlaneStub(channel).Deploy(
            workers_pb2.DeployRequest(bundle=bundle),
            metadata=[("authorization", f"Bearer {made.token}")],
            timeout=10,
        )
    poll_until(lambda: serves(made), timeout=10, what="the fuzz worker loaded at the PoP")
    yield made
    made.down()


def serves(cluster: Cluster) -> bool:
    """The PoP answers a normal request through the worker."""
    with grpc.insecure_channel(cluster.node(POP).grpc_address) as channel:
        status = pop_pb2_grpc.PopStub(channel).Status(pop_pb2.PopStatusRequest(), timeout=5)
    if not any(worker.name == "fuzz-http" for worker in status.workers):
        return False
    data = b"GET /ok HTTP/1.1\r\nHost: " + FUZZ_HOST.encode() + b"\r\n\r\n"
    result = asyncio.run(exchange(cluster.node(POP).http_address, data))
    return [r.status for r in result.responses] == [200] and b'"/ok"' in result.responses[0].body


@pytest.fixture(scope="module")
def slow(cluster: Cluster) -> Iterator[SlowClients]:
    clients = SlowClients(cluster.node(POP).http_address)
    clients.start()
    yield clients
    clients.join(timeout=1)


@pytest.fixture(scope="module")
def driver(cluster: Cluster, slow: SlowClients) -> Iterator[HttpDriver]:
    made = HttpDriver(cluster.node(POP).http_address)
    yield made
    print(f"\nhttp fuzz: {made.sent} exchanges, statuses {dict(sorted(made.statuses.items()))}")
    made.close()


# -- the tests -------------------------------------------------------------------------------------


@reseeded
@settings(HYPOTHESIS, max_examples=EXAMPLES)
@given(data=st.data())
def test_malformed_http_gets_a_4xx_or_a_closed_connection_never_a_hang_or_5xx(
    driver: HttpDriver, data: st.DataObject
) -> None:
    batch = data.draw(
        st.lists(http_requests(), min_size=BATCH_EXCHANGES, max_size=BATCH_EXCHANGES),
        label="batch",
    )
    results = driver.run(batch)
    bad = [
        f"{request.describe()}\n    -> {'; '.join(reasons)}"
        for request, result in zip(batch, results, strict=True)
        if (reasons := problems(request, result))
    ]
    assert not bad, f"{len(bad)} bad exchange(s):\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("what", "data", "status"),
    [
        ("url over 16 KiB", b"GET /" + b"u" * (16 * 1024 + 1) + b" HTTP/1.1\r\n", 414),
        ("header over 32 KiB", b"GET / HTTP/1.1\r\nX-Big: " + b"h" * (33 * 1024) + b"\r\n", 431),
        (
            "257 fields",
            b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: h\r\n" % i for i in range(257)),
            431,
        ),
        ("length over 10 MiB", b"POST / HTTP/1.1\r\nContent-Length: 10485761\r\n", 413),
        ("two lengths", b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n", 400),
        (
            "length and chunked",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n",
            400,
        ),
        ("bad chunk size", b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        ("HTTP/0.9", b"GET /\r\n", 505),
        ("bogus version", b"GET / HTTP/7.1\r\n", 400),
        ("HTTP/0.9 written out", b"GET / HTTP/0.9\r\n", 505),
    ],
)
def test_each_limit_and_framing_error_gets_its_own_status(
    driver: HttpDriver, cluster: Cluster, what: str, data: bytes, status: int
) -> None:
    if not data.endswith(b"\r\n\r\n") and b"\r\n\r\n" not in data:
        data = data.replace(b"\r\n", b"\r\nHost: " + FUZZ_HOST.encode() + b"\r\n", 1) + b"\r\n"
    (result,) = driver.run([HttpRequest(data, what)])
    assert [response.status for response in result.responses][:1] == [status], result.raw[:300]


def test_slow_partial_requests_are_answered_or_closed_within_the_ingress_bound(
    slow: SlowClients,
) -> None:
    slow.join(timeout=max(c.bound_s for c in slow.clients) + SLOW_SLACK_S + 10.0)
    report = [
        f"{c.name}: {'never' if c.ended_after_s is None else f'{c.ended_after_s:.1f} s'}"
        f" (bound {c.bound_s:.0f} s) {c.received[:60]!r}"
        for c in slow.clients
    ]
    print("\nslow clients:\n  " + "\n  ".join(report))
    for client in slow.clients:
        assert client.ended_after_s is not None, report
        assert client.ended_after_s <= client.bound_s + SLOW_SLACK_S, report
        # Not cut off at once either: the bound is a grace period, not a refusal.
        assert client.ended_after_s >= client.bound_s - 0.5, report
        assert client.received.startswith(client.answer), report


def test_the_pop_survived_the_http_fuzz(cluster: Cluster, driver: HttpDriver) -> None:
    assert cluster.alive(POP)
    with grpc.insecure_channel(cluster.node(POP).grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert serves(cluster)
    assert driver.sent >= EXAMPLES * BATCH_EXCHANGES
