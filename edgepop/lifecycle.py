"""One lifecycle for every role: config -> storage -> servers -> serve -> drain -> close.

`Node` is the shared base of ControlPlane, OriginNode and PopNode (as dask's Server is
for its Scheduler and Worker). Subclasses fill in the hooks; the order, the health
status, the ready file and signal handling are the same everywhere.

A node started by a foreground launcher (`edgectl cluster up` without --detach) is told
that process in `EDGEPOP_LAUNCHER` and stops, as on SIGTERM, once it is gone — whatever
ended it, SIGKILL included — so no node outlives the terminal session that started it.

Every node runs on uvloop (`EDGEPOP_EVENT_LOOP=asyncio` for the standard library's loop,
to compare): the loop's own work is a large share of each call here, and uvloop's is
cheaper (docs/ARCHITECTURE.md, "Processes on one machine").
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import gc
import json
import logging
import os
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import grpc
import uvloop

from edge.v1 import control_plane_pb2 as cp_pb2
from edgepop.auth import ensure_token
from edgepop.config import NodeConfig
from edgepop.faults import fault_from_pb
from edgepop.membership import Membership
from edgepop.metrics import NodeMetrics
from edgepop.netem import NetworkEmulator
from edgepop.rpc import (
    NOT_SERVING,
    SERVING,
    LenientRegistration,
    add_health_and_reflection,
    add_port,
    build_server,
)

READY_FILE_NAME = "ready.json"
STORAGE_DIR_NAME = "lmdb"
# "PID:START" of the process whose end stops this node (see launcher_spec); unset for
# nodes of a detached cluster, which run until told to stop.
LAUNCHER_ENV = "EDGEPOP_LAUNCHER"
# The event loop a node runs on: "uvloop" (the default) or "asyncio" (to compare).
EVENT_LOOP_ENV = "EDGEPOP_EVENT_LOOP"

log = logging.getLogger(__name__)

T = TypeVar("T")


class Status(enum.Enum):
    created = "created"
    starting = "starting"
    running = "running"
    draining = "draining"
    closed = "closed"
    failed = "failed"


class Node(abc.ABC):
    """A process of the cluster. `role` names it the same everywhere (logs, metrics, CLI)."""

    role: ClassVar[str]
    # The metric families this role exports (edgepop.metrics declares them per role).
    metrics_class: ClassVar[type[NodeMetrics]] = NodeMetrics
    # How the node registers with the control plane (the control plane itself does not).
    registry_role: ClassVar[int] = cp_pb2.ROLE_UNSPECIFIED

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.name = config.name
        self.region = config.region
        self.status = Status.created
        self.metrics = self.metrics_class(config.name, config.region)
        self.netem = NetworkEmulator(config.topology, config.region, self.metrics)
        self.token = ""
        self.grpc_address = ""
        self.metrics_address = ""
        self.http_address = ""
        self.started_at = 0.0
        self.membership: Membership | None = None
        self._server: grpc.aio.Server | None = None
        self._health: Any = None
        self._stop_metrics: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped = asyncio.Event()
        self._start_lock = asyncio.Lock()

    # -- hooks ---------------------------------------------------------------------------

    @abc.abstractmethod
    def open_storage(self) -> None:
        """Open LMDB under `self.storage_dir` (and recover in-memory state from it)."""

    @abc.abstractmethod
    def add_services(self, server: grpc.aio.Server) -> list[str]:
        """Register the role's servicers; return their full service names."""

    async def start_extra_servers(self) -> None:
        """Start servers besides gRPC and metrics (the PoP's HTTP ingress)."""

    async def on_serving(self) -> None:
        """Start background work (replication, heartbeats) once the servers accept calls."""

    async def before_serving(self) -> None:
        """Last preparation before health says SERVING (e.g. a PoP loading its workers)."""

    async def on_drain(self) -> None:
        """Stop background work before the servers stop."""

    def on_topology(self, topology: cp_pb2.Topology) -> None:
        """React to a topology push (after faults are applied to the emulator)."""

    def on_heartbeat(self, response: cp_pb2.HeartbeatResponse) -> None:
        """React to the control plane's answer to a heartbeat (work it hands out)."""

    @abc.abstractmethod
    def close_storage(self) -> None:
        """Close LMDB; called last, after every server and task has stopped."""

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def advertised_host(self) -> str:
        return self.config.advertise_host or self.config.host

    @property
    def storage_dir(self) -> Path:
        return self.config.data_dir / STORAGE_DIR_NAME

    @property
    def ready_file(self) -> Path:
        return self.config.data_dir / READY_FILE_NAME

    async def start(self, timeout: float = 30.0) -> None:
        """Open storage and start serving; idempotent."""
        async with self._start_lock:
            if self.status is not Status.created:
                return
            self.status = Status.starting
            try:
                await asyncio.wait_for(self._start(), timeout)
            except BaseException:
                self.status = Status.failed
                raise
            self.status = Status.running

    async def _start(self) -> None:
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.ready_file.unlink()
        self.token = ensure_token(config.token_file)
        self.open_storage()

        server = build_server()
        # Our services parse requests leniently (health and reflection keep gRPC's own).
        names = self.add_services(LenientRegistration(server))
        self._health = add_health_and_reflection(server, names)
        # "" (the whole server) says SERVING only once the node is ready, not at bind time:
        # a probe or grpcurl without a service name then means "ready".
        await self._health.set("", NOT_SERVING)
        port = add_port(server, f"{config.host}:{config.grpc_port}", config.tls)
        if port == 0:
            raise OSError(f"cannot bind gRPC port {config.host}:{config.grpc_port}")
        self.grpc_address = f"{self.advertised_host}:{port}"
        await server.start()
        self._server = server
        metrics_port, self._stop_metrics = self.metrics.serve(config.host, config.metrics_port)
        self.metrics_address = f"{self.advertised_host}:{metrics_port}"
        await self.start_extra_servers()

        self.started_at = time.time()
        await self.on_serving()
        self._join_cluster()
        await self.before_serving()
        settle_collector()
        await self._health.set("", SERVING)
        for name in names:
            await self._health.set(name, SERVING)
        self.metrics.node_up.set(1)
        self._write_ready_file()
        log.info(
            "%s %s serving: grpc=%s metrics=%s http=%s",
            self.role,
            self.name,
            self.grpc_address,
            self.metrics_address,
            self.http_address or "-",
        )

    def _join_cluster(self) -> None:
        """Register, heartbeat and follow the topology in the background (data-plane roles).

        The node serves without the control plane: registration retries forever, and
        the last topology and faults stay in force while the control plane is away.
        """
        if not self.config.control_plane_address or self.registry_role == cp_pb2.ROLE_UNSPECIFIED:
            return
        self.membership = Membership(
            control_plane_address=self.config.control_plane_address,
            info=cp_pb2.NodeInfo(
                name=self.name,
                region=self.region,
                role=self.registry_role,  # type: ignore[arg-type]
                grpc_address=self.grpc_address,
                http_address=self.http_address,
                metrics_address=self.metrics_address,
            ),
            token=self.token,
            on_topology=self._apply_topology,
            on_heartbeat=self.on_heartbeat,
        )
        self.spawn(self.membership.run_heartbeats(), "heartbeats")
        self.spawn(self.membership.run_topology_watch(), "topology-watch")

    def _apply_topology(self, topology: cp_pb2.Topology) -> None:
        self.netem.set_faults(fault_from_pb(fault) for fault in topology.faults)
        self.on_topology(topology)

    def _write_ready_file(self) -> None:
        ready = {
            "name": self.name,
            "role": self.role,
            "region": self.region,
            "pid": os.getpid(),
            "grpc_address": self.grpc_address,
            "http_address": self.http_address,
            "metrics_address": self.metrics_address,
        }
        temporary = self.ready_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(ready))
        temporary.replace(self.ready_file)

    def spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run background work until close; a crash in it is logged, not swallowed silently."""
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)

        def done(finished: asyncio.Task[Any]) -> None:
            self._tasks.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                log.error("background task %s failed", name, exc_info=finished.exception())

        task.add_done_callback(done)
        return task

    async def serve(self) -> None:
        """Block until close() has finished."""
        await self._stopped.wait()

    async def close(self, reason: str = "") -> None:
        """Drain and stop: health NOT_SERVING, background work, servers, then storage."""
        if self.status in (Status.draining, Status.closed):
            await self._stopped.wait()
            return
        log.info("%s %s closing (%s)", self.role, self.name, reason or "requested")
        self.status = Status.draining
        self.metrics.node_up.set(0)
        with contextlib.suppress(FileNotFoundError):
            self.ready_file.unlink()
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        await self.on_drain()
        if self.membership is not None:
            await self.membership.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.config.drain_s)
        await self.stop_extra_servers()
        if self._server is not None:
            await self._server.stop(self.config.drain_s)
        if self._stop_metrics is not None:
            await asyncio.to_thread(self._stop_metrics)
        self.close_storage()
        self.status = Status.closed
        self._stopped.set()

    async def stop_extra_servers(self) -> None:
        """Stop what start_extra_servers started."""


# Container allocations (net of frees) between two young collections; Python's default
# is 700. See `settle_collector`.
YOUNG_COLLECTION_THRESHOLD = 10_000


def settle_collector() -> None:
    """Tune the cyclic garbage collector for a node that starts serving.

    What exists now (modules, protobuf descriptors, config models, loaded workers) lives
    as long as the process: frozen, out of the collector's sight, a full collection walks
    only what requests allocate. Measured at a PoP under worker load before: full
    collections of 26-58 ms, 1-2 a second, each charged to whichever worker step it
    interrupted (a 20 ms cpu_ms limit turned into 503s). No collection first: it would
    cost every node tens of ms of CPU at start, for little startup garbage.

    And young collections wait for YOUNG_COLLECTION_THRESHOLD allocations instead of 700.
    With 64 requests in flight, 700 allocations came every few requests, so nearly every
    young collection found the requests' live objects, promoted them, and the promotions
    set off full collections (each walking every Durable Object in memory: 5-12 ms of CPU
    idle, up to 33 ms under load). One run of the worker benches: 26,000 young, 2,363
    middle and 214 full collections at the busy PoP, 5.5 s of its CPU, against almost none
    with the higher threshold. Our requests make little cyclic garbage, so it waits little
    longer to be freed.
    """
    gc.freeze()
    _, middle, full = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, full)


def process_start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks after boot); None once it has exited.

    A pid is reused after its process is reaped; the pair (pid, start time) is not, so it
    names one process for good.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields follow the parenthesised command name: state is field 3, starttime field 22.
    fields = stat.rsplit(")", 1)[-1].split()
    if fields[0] in ("Z", "X"):  # exited, not yet reaped
        return None
    return int(fields[19])


def launcher_spec(pid: int | None = None) -> str:
    """The `EDGEPOP_LAUNCHER` value naming process `pid` (default: this one)."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{process_start_time(pid)}"


def launcher_alive(spec: str) -> bool:
    """Whether the process `spec` (a launcher_spec value) still runs."""
    pid, _, started = spec.partition(":")
    try:
        return process_start_time(int(pid)) == int(started)
    except ValueError:
        return False


async def wait_launcher_gone(spec: str) -> None:
    """Return once the process `spec` names has exited (at once if it already has).

    A pidfd (Linux 5.3) becomes readable when its process exits: no polling, nothing
    asked of the launcher, and unlike PR_SET_PDEATHSIG it does not matter which process
    (the zygote, another edgectl) forked the node, nor which thread.
    """
    pid = int(spec.partition(":")[0])
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if not launcher_alive(spec):
            return  # gone before the pidfd was taken (its pid may name another process)
        loop = asyncio.get_running_loop()
        gone = asyncio.Event()
        loop.add_reader(pidfd, gone.set)
        try:
            await gone.wait()
        finally:
            loop.remove_reader(pidfd)
    finally:
        os.close(pidfd)


def event_loop_factory() -> Any:
    """The event loop every node runs on: uvloop's, unless `EVENT_LOOP_ENV` says "asyncio"."""
    choice = os.environ.get(EVENT_LOOP_ENV, "uvloop")
    if choice == "asyncio":
        return asyncio.new_event_loop
    if choice != "uvloop":
        raise SystemExit(f"{EVENT_LOOP_ENV} must be uvloop or asyncio, not {choice!r}")
    return uvloop.new_event_loop


def run_on_node_loop(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the event loop nodes run on (also the benchmarks' baseline
    servers, so that a ratio compares edgepop with a bare server on the same loop)."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(main)


def run(node: Node) -> None:
    """Run a node until SIGTERM/SIGINT (or its launcher's end), then drain and close it.

    For `__main__` modules.
    """
    logging.basicConfig(
        level=node.config.log_level,
        format=f"%(asctime)s %(levelname)s {node.role} {node.name} %(name)s: %(message)s",
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        closing: set[asyncio.Task[None]] = set()

        def on_signal(signum: signal.Signals) -> None:
            closing.add(asyncio.create_task(node.close(signum.name)))

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        # Taken out of the environment: whatever this node starts is not tied to it.
        launcher = os.environ.pop(LAUNCHER_ENV, "")
        try:
            await node.start()
        except BaseException:
            await node.close("start failed")
            raise

        async def stop_with_launcher() -> None:
            await wait_launcher_gone(launcher)
            await node.close("launcher gone")

        watch = asyncio.create_task(stop_with_launcher()) if launcher else None
        await node.serve()
        if watch is not None:
            watch.cancel()

    run_on_node_loop(main())
