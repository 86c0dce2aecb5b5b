"""One seeded fault run, start to verdict: `edgectl chaos run` and the tests use this.

A run (`run_seed`):
1. starts its own cluster in a fresh dir (default: us-east-1 + new-york, london, tokyo x 2
   PoPs, the seed's delays on), with `EDGEPOP_BUGGIFY` in the environment when a planted
   bug is asked for (every node inherits the launcher's environment, forked or spawned);
2. runs the clients (edgectl.chaos.clients) and the nemesis (edgectl.chaos.nemesis) on
   one event loop and one clock for `duration_s`; the nemesis heals everything by
   `heal_by_s`, the clients keep going to the end;
3. lets the cluster settle (every node healthy, every replica at the origin's head), reads
   the final state — each counter through its owner (an object call, retried until it
   answers), the placements, a digest of every node's KV dump, the SQL table's rows at
   the primary and a digest of every node's dump of its database — and stops the cluster;
4. checks the history against the final state (edgectl.chaos.checks).

The clients share the runner's process rather than a client process of their own: on the
default topology and pace, 12 clients doing 60-100 ops/s (the emulated round trips bound
them below the 200 ops/s cap) cost the runner 4.6-6.3 s of CPU per 60 s run, under 10% of
one core including the nemesis and the display (`SeedRun.runner_cpu_s`), which leaves
the nodes their CPU and does not disturb the clients' own timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import yaml

from edge.v1 import control_plane_pb2 as cp_pb2
from edge.v1 import kv_pb2, objects_pb2, origin_pb2, origin_pb2_grpc, pop_pb2, sql_pb2
from edgectl.chaos import checks, diskfault, report
from edgectl.chaos.clients import (
    SQL_DATABASE,
    SQL_SETUP,
    Directory,
    Recorder,
    Workload,
    default_workload,
    make_clients,
    object_key,
    region_metadata,
    select_tags,
    tags_of,
)
from edgectl.chaos.diskfault import DiskFaults
from edgectl.chaos.history import History, split_object_ref
from edgectl.chaos.nemesis import (
    DISK_FAULTS,
    FAULT_KINDS,
    Clock,
    Nemesis,
    NemesisLog,
    PlanTopology,
    Schedule,
    plan,
)
from edgectl.launcher import Cluster
from edgepop import objectid, retry
from edgepop.buggify import ENV_VAR as BUGGIFY_ENV
from edgepop.topology import Topology, load_topology, parse_topology

# The default chaos topology: what users run (issue 10), delays on.
DEFAULT_TOPOLOGY: dict[str, Any] = {
    "emulate_delay": True,
    "regions": [
        {"name": "us-east-1"},
        {"name": "new-york", "pop_nodes": 2},
        {"name": "london", "pop_nodes": 2},
        {"name": "tokyo", "pop_nodes": 2},
    ],
}
CLUSTER_START_TIMEOUT_S = 60.0
# After the last op: every node healthy and every replica at the origin's head.
SETTLE_TIMEOUT_S = 60.0
SETTLE_POLL_S = 0.2
# The final read of a counter is retried (through any PoP) until it answers.
FINAL_READ_TIMEOUT_S = 30.0
FINAL_ATTEMPT_TIMEOUT_S = 3.0
FINAL_INTERVAL_S = 0.2
# Clients stop taking new ops at the end; in-flight ones get their give-up time and this.
CLIENT_DRAIN_S_EXTRA = 5.0
PROGRESS_REFRESH_S = 0.5
CHECK_BUDGET_S_DEFAULT = 5.0
HISTORY_FILE_NAME = "history.jsonl"


@dataclass
class RunConfig:
    """One seed's run, as `edgectl chaos run` and the tests describe it."""

    seed: int
    duration_s: float
    faults: tuple[str, ...] = FAULT_KINDS
    topology_file: Path | None = None
    # A planted bug (edgepop.buggify) for every process of the cluster; "" = none.
    buggify: str = ""
    # Where the cluster's dir goes (a fresh temp dir when None); kept after the run with
    # `keep`, or when the run found a violation (the node logs say why).
    work_dir: Path | None = None
    keep: bool = False
    history_file: Path | None = None
    clients_per_region: int = 4
    ops_per_s_max: float = 200.0
    # The clients' op mix: None = clients.OP_WEIGHTS.
    op_weights: tuple[tuple[str, float], ...] | None = None
    check_budget_s: float = CHECK_BUDGET_S_DEFAULT


@dataclass
class SeedRun:
    """Everything one run produced: the report and the tests read this."""

    config: RunConfig
    schedule: Schedule
    history: History
    final: checks.FinalState
    result: checks.CheckResult
    nemesis: NemesisLog
    # Seconds per phase: up, run, drain, settle, final, down, check, total.
    timings: dict[str, float] = field(default_factory=dict)
    runner_cpu_s: float = 0.0
    # What did not go to plan outside the history (a node that did not settle, ...).
    notes: list[str] = field(default_factory=list)
    data_dir: Path | None = None  # kept dir, None when removed

    @property
    def violated(self) -> bool:
        return not self.result.ok


def summary(run: SeedRun) -> report.RunSummary:
    """The run as the report renders it (line, table, windows, plot)."""
    config = run.config
    faults = "all" if set(config.faults) == set(FAULT_KINDS) else ",".join(config.faults)
    settings = {
        "faults": faults,
        "topology": str(config.topology_file) if config.topology_file else "default",
        "schedule": f"{len(run.schedule.steps)} steps, healed by {run.schedule.heal_by_s:g} s",
        "clients": f"{config.clients_per_region} per region, <= {config.ops_per_s_max:g} ops/s",
    }
    if config.buggify:
        settings["buggify"] = config.buggify
    if config.op_weights:
        settings["ops"] = ", ".join(f"{kind} {weight:g}" for kind, weight in config.op_weights)
    return report.RunSummary(
        seed=config.seed,
        duration_s=config.duration_s,
        history=run.history,
        result=run.result,
        final=run.final,
        settings=settings,
        notes=[*run.notes, *(f"nemesis: {skip}" for skip in run.nemesis.skipped)],
    )


def violations_text(run: SeedRun) -> str:
    """Each violation with the smallest window of history that shows it and the faults
    around it (what a failing seed prints)."""
    shown = summary(run)
    return "\n".join(report.violation_text(shown, violation) for violation in run.result.violations)


# -- environment and topology ------------------------------------------------------------


@contextlib.contextmanager
def node_environment(values: dict[str, str]) -> Iterator[None]:
    """`values` in the environment of the processes started inside (nodes inherit it):
    the planted bug (`EDGEPOP_BUGGIFY`), the disk-fault shim."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def disk_faults_for(
    schedule: Schedule, run_dir: Path
) -> tuple[DiskFaults | None, dict[str, str], str]:
    """(the flag, the nodes' environment, why not) for a schedule with disk faults: the
    shim is built into the run's dir; without gcc those steps are skipped, saying so."""
    if not any(step.kind in DISK_FAULTS for step in schedule.steps):
        return None, {}, ""
    try:
        library = diskfault.build(run_dir)
    except diskfault.DiskFaultUnavailable as error:
        return None, {}, str(error)
    faults = DiskFaults(run_dir / "disk-fault-flag")
    return faults, diskfault.environment(library, faults.flag), ""


def topology_file_for(config: RunConfig, run_dir: Path) -> Path:
    """The run's topology file: the one given, or the default chaos topology."""
    if config.topology_file is not None:
        return config.topology_file
    path = run_dir / "topology.yaml"
    path.write_text(yaml.safe_dump(DEFAULT_TOPOLOGY))
    return path


def workload_for(config: RunConfig, topology: Topology) -> Workload:
    """The default workload on the topology's PoP regions, at the configured size and pace."""
    workload = default_workload([region.name for region in topology.pop_regions()])
    return replace(
        workload,
        clients_per_region=config.clients_per_region,
        ops_per_s_max=config.ops_per_s_max,
        op_weights=config.op_weights or workload.op_weights,
    )


def schedule_for(config: RunConfig, topology: Topology | None = None) -> Schedule:
    """The seed's schedule (pure): what `edgectl chaos schedule` prints and the run
    executes. `topology` is the run's (default: the file's, else the default one)."""
    if topology is None and config.topology_file is not None:
        topology = load_topology(config.topology_file)
    topology = topology or parse_topology(DEFAULT_TOPOLOGY)
    return plan(
        config.seed,
        config.duration_s,
        config.faults,
        PlanTopology.of(topology, workload_for(config, topology).object_names),
    )


# -- the run -----------------------------------------------------------------------------


def run_seed(
    config: RunConfig, on_progress: Callable[[float, dict[str, int], list[str]], None] | None = None
) -> SeedRun:
    """Start a cluster, run clients and nemesis, settle, read, stop, check."""
    started = time.monotonic()
    cpu_before = _cpu_s()
    if config.work_dir is not None:
        config.work_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(
        tempfile.mkdtemp(prefix=f"chaos-seed{config.seed}-", dir=config.work_dir)
    ).resolve()
    topology_file = topology_file_for(config, run_dir)
    topology = load_topology(topology_file)
    workload = workload_for(config, topology)
    schedule = schedule_for(config, topology)
    # The nodes stop once this process is gone, however it ends (Ctrl-C, a CI timeout,
    # kill -9): a fault run never leaves a cluster behind.
    cluster = Cluster(run_dir / "cluster", topology_file=topology_file, stop_with_launcher=True)
    timings: dict[str, float] = {}
    notes: list[str] = []
    disk_faults, environment, disk_faults_missing = disk_faults_for(schedule, run_dir)
    if disk_faults_missing:
        notes.append(f"disk faults skipped: {disk_faults_missing}")
    if config.buggify:
        environment[BUGGIFY_ENV] = config.buggify
    with node_environment(environment):
        try:
            cluster.up(timeout=CLUSTER_START_TIMEOUT_S)
            timings["up"] = time.monotonic() - started
            history, final, log = asyncio.run(
                _drive(
                    cluster,
                    schedule,
                    workload,
                    config,
                    timings,
                    notes,
                    on_progress,
                    disk_faults,
                    disk_faults_missing,
                )
            )
        finally:
            down_started = time.monotonic()
            cluster.down()
            timings["down"] = time.monotonic() - down_started
    cpu_s = _cpu_s() - cpu_before
    if config.history_file is not None:
        history.dump(config.history_file)
    check_started = time.monotonic()
    result = checks.check(history, final, budget_s=config.check_budget_s)
    timings["check"] = time.monotonic() - check_started
    timings["total"] = time.monotonic() - started
    kept: Path | None = run_dir
    if config.keep or not result.ok:
        # Beside the node logs, so that a kept run can be checked and reported again.
        history.dump(run_dir / HISTORY_FILE_NAME)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        kept = None
    return SeedRun(
        config=config,
        schedule=schedule,
        history=history,
        final=final,
        result=result,
        nemesis=log,
        timings=timings,
        runner_cpu_s=cpu_s,
        notes=notes,
        data_dir=kept,
    )


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _drive(
    cluster: Cluster,
    schedule: Schedule,
    workload: Workload,
    config: RunConfig,
    timings: dict[str, float],
    notes: list[str],
    on_progress: Callable[[float, dict[str, int], list[str]], None] | None,
    disk_faults: DiskFaults | None = None,
    disk_faults_missing: str = "",
) -> tuple[History, checks.FinalState, NemesisLog]:
    clock = Clock()
    directory = Directory(
        list(cluster.nodes.values()), cluster.topology, cluster.control_plane.grpc_address
    )
    recorder = Recorder(clock)
    nemesis = Nemesis(
        cluster,
        schedule,
        clock,
        directory.control_plane,
        cluster.token,
        disk_faults,
        disk_faults_missing,
    )
    stop = asyncio.Event()
    sql_bookmark = await _create_sql_table(directory, cluster)
    clients = make_clients(
        workload, directory, recorder, config.seed, f"s{config.seed}", sql_bookmark
    )
    client_tasks = [asyncio.create_task(client.run(stop)) for client in clients]
    progress_task = (
        asyncio.create_task(_report_progress(clock, recorder, nemesis, on_progress))
        if on_progress is not None
        else None
    )
    try:
        await nemesis.run()
        await clock.sleep_until(schedule.duration_s)
        timings["run"] = clock.now()
        stop.set()
        drained = time.monotonic()
        _, pending = await asyncio.wait(
            client_tasks, timeout=workload.give_up_s + CLIENT_DRAIN_S_EXTRA
        )
        for task in pending:
            task.cancel()
        if pending:
            notes.append(f"{len(pending)} clients did not finish their last op in time")
        timings["drain"] = time.monotonic() - drained
        settled = time.monotonic()
        if not await _settle(cluster, directory, nemesis):
            notes.append(f"the cluster did not settle within {SETTLE_TIMEOUT_S:g} s")
        timings["settle"] = time.monotonic() - settled
        read = time.monotonic()
        final = await _final_state(cluster, directory, workload, notes)
        timings["final"] = time.monotonic() - read
    finally:
        stop.set()
        for task in client_tasks:
            task.cancel()
        if progress_task is not None:
            progress_task.cancel()
        await asyncio.gather(*client_tasks, return_exceptions=True)
        nemesis.close()
        await directory.close()
    if progress_task is not None:
        with contextlib.suppress(asyncio.CancelledError):
            await progress_task
    history = History(ops=recorder.ops, faults=nemesis.log.faults)
    return history, final, nemesis.log


async def _create_sql_table(directory: Directory, cluster: Cluster) -> str:
    """The clients' SQL database and table, at the primary before any fault; the
    bookmark of the table's creation (every session starts there)."""
    origin = origin_pb2_grpc.OriginStub(directory.channel(cluster.origin.grpc_address))
    await origin.SqlCreate(sql_pb2.SqlCreateRequest(name=SQL_DATABASE), timeout=10)
    created = await origin.SqlQuery(
        sql_pb2.SqlQueryRequest(
            database=SQL_DATABASE, statements=[sql_pb2.SqlStatement(sql=SQL_SETUP)]
        ),
        timeout=10,
    )
    return str(created.bookmark)


async def _report_progress(
    clock: Clock,
    recorder: Recorder,
    nemesis: Nemesis,
    on_progress: Callable[[float, dict[str, int], list[str]], None],
) -> None:
    while True:
        now = clock.now()
        active = [f"{f.kind} {' '.join(f.targets)}".strip() for f in nemesis.log.active(now)]
        on_progress(now, dict(recorder.counts), active)
        await asyncio.sleep(PROGRESS_REFRESH_S)


# -- after the run -----------------------------------------------------------------------


async def _settle(cluster: Cluster, directory: Directory, nemesis: Nemesis) -> bool:
    """Poll until every node is healthy and every replica holds the origin's head."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    origin = origin_pb2_grpc.OriginStub(directory.channel(cluster.origin.grpc_address))
    while time.monotonic() < deadline:
        # A node that died after the heal (it should not) is started again.
        for node in cluster.nodes.values():
            if not cluster.alive(node.name):
                await nemesis.restart(node.name)
        with contextlib.suppress(grpc.aio.AioRpcError):
            listed = await directory.control_plane.ListNodes(cp_pb2.ListNodesRequest(), timeout=2)
            healthy = {info.name for info in listed.nodes if info.healthy}
            wanted = {n.name for n in cluster.nodes.values() if n.role != "control_plane"}
            if wanted <= healthy:
                head = (await origin.Status(origin_pb2.OriginStatusRequest(), timeout=2)).head_seq
                statuses = await asyncio.gather(
                    *(
                        directory.pop(pop.grpc_address).Status(
                            pop_pb2.PopStatusRequest(), timeout=2
                        )
                        for pop in cluster.pops
                    )
                )
                if all(status.applied_seq == head for status in statuses):
                    return True
        await asyncio.sleep(SETTLE_POLL_S)
    return False


async def _final_state(
    cluster: Cluster, directory: Directory, workload: Workload, notes: list[str]
) -> checks.FinalState:
    metadata = (("authorization", f"Bearer {cluster.token}"),)
    counters: dict[str, int] = {}
    for ref, region in workload.objects:
        value = await _read_counter(directory, ref, region)
        if value is None:
            notes.append(f"{ref}: no answer to the final read in {FINAL_READ_TIMEOUT_S:g} s")
        else:
            counters[object_key(ref)] = value
    placements: dict[str, tuple[str, int]] = {}
    ids = {objectid.id_from_name(*split_object_ref(ref)).hex(): ref for ref, _ in workload.objects}
    with contextlib.suppress(grpc.aio.AioRpcError):
        listed = await directory.control_plane.ListPlacements(
            objects_pb2.ListPlacementsRequest(), metadata=metadata, timeout=5
        )
        for placement in listed.placements:
            if placement.id in ids:
                placements[object_key(ids[placement.id])] = (placement.owner, int(placement.epoch))
    dumps: dict[str, str] = {}
    origin = origin_pb2_grpc.OriginStub(directory.channel(cluster.origin.grpc_address))
    sources: list[tuple[str, Any]] = [(cluster.origin.name, origin)]
    sources += [(pop.name, directory.pop(pop.grpc_address)) for pop in cluster.pops]
    sql_dumps: dict[str, str] = {}
    for name, stub in sources:
        try:
            dumps[name] = await _dump_digest(stub, metadata)
        except grpc.aio.AioRpcError as error:
            dumps[name] = f"unreadable: {error.code().name}"
        try:
            sql_dumps[name] = await _sql_dump_digest(stub, metadata)
        except grpc.aio.AioRpcError as error:
            sql_dumps[name] = f"unreadable: {error.code().name}"
    sql_rows: list[str] | None = None
    try:
        selected = await origin.SqlQuery(
            sql_pb2.SqlQueryRequest(database=SQL_DATABASE, statements=[select_tags()]),
            timeout=FINAL_ATTEMPT_TIMEOUT_S,
        )
        sql_rows = tags_of(selected)
    except grpc.aio.AioRpcError as error:
        notes.append(f"SQL rows: no answer from the primary ({error.code().name})")
    return checks.FinalState(
        counters=counters,
        placements=placements,
        dumps=dumps,
        sql_rows=sql_rows,
        sql_dumps=sql_dumps,
    )


async def _read_counter(directory: Directory, ref: str, region: str) -> int | None:
    """The counter's value, read through its owner: tried through the nearest PoP that has
    not just failed, until one answers (None after FINAL_READ_TIMEOUT_S)."""
    namespace, name = split_object_ref(ref)
    request = objects_pb2.ObjectCallRequest(
        namespace=namespace, name=name, method="get", location_hint=region
    )
    retrying = retry.until_answered(FINAL_READ_TIMEOUT_S, FINAL_INTERVAL_S)
    try:
        async for attempt in retrying:
            with attempt:
                entry = directory.nearest(region)
                try:
                    response = await directory.pop(entry.grpc_address).ObjectCall(
                        request, metadata=region_metadata(region), timeout=FINAL_ATTEMPT_TIMEOUT_S
                    )
                except grpc.aio.AioRpcError:
                    directory.suspect(entry.name)
                    raise
                return int(response.result_json)
    except grpc.aio.AioRpcError:
        return None
    return None


async def _dump_digest(stub: Any, metadata: tuple[tuple[str, str], ...]) -> str:
    """`seq:sha256` of a node's whole KV store, read in one transaction (Dump)."""
    digest = hashlib.sha256()
    seq = 0
    async for chunk in stub.Dump(kv_pb2.DumpRequest(), metadata=metadata, timeout=60):
        seq = int(chunk.seq)
        for record in chunk.records:
            # Every field of a record, each length-prefixed: equal digests, equal stores.
            for part in (
                record.namespace.encode(),
                record.key.encode(),
                record.value,
                record.metadata_json.encode(),
                str(record.expiration).encode(),
                str(record.seq).encode(),
            ):
                digest.update(len(part).to_bytes(8, "big") + part)
    return f"{seq}:{digest.hexdigest()[:32]}"


async def _sql_dump_digest(stub: Any, metadata: tuple[tuple[str, str], ...]) -> str:
    """`seq:sha256` of a node's copy of the clients' SQL database (its SQL dump)."""
    dumped = await stub.SqlDump(
        sql_pb2.SqlDumpRequest(database=SQL_DATABASE), metadata=metadata, timeout=60
    )
    return f"{dumped.applied_seq}:{hashlib.sha256(dumped.dump.encode()).hexdigest()[:32]}"
