"""Every acknowledged write survives a power loss of the whole machine; a build that does not
sync loses some, and the same check says so.

`kill -9` keeps the page cache, so the crash tests elsewhere would pass if nothing ever
called fsync. Here the cluster runs over the power-loss shim (`tests/integration/
powerloss/`): every LMDB data file keeps, through the simulated loss, exactly what its
process made durable. The scenario, on us-east-1 (control plane, origin) + london x2 with
delay emulation off, so that each Durable Object has its owner and standby on one site:

1. clients write through both PoPs, one call at a time each, and record what was
   acknowledged: new KV keys (key -> value, seq) and increments of two Counters;
2. the cluster is stopped cleanly and started again (every store closes, which syncs),
   and the clients write on;
3. while every client has a call in flight, the plug is pulled: every process frozen and
   killed at once, then each data file replaced by its synced state;
4. the cluster starts again under a new boot id, as after a reboot (the PoPs' replicas,
   which never promise durability, discard themselves and rebuild from the origin);
5. the check: every acknowledged KV write is at the origin with its seq, every replica
   converges to the origin's dump, each Counter counts at least its highest acknowledged
   value, and increments after the restart hand out no acknowledged value again.

The planted bug `no-fsync` (`edgepop/buggify.py`) runs the same scenario on stores that
commit without sync; the check must then find lost acknowledged writes, which proves it
can fail; and it must find exactly those acknowledged after the clean stop (which made
everything before it durable), which proves it sees a partial loss, not only an empty
origin.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import grpc
import pytest

from edge.v1 import kv_pb2, objects_pb2, pop_pb2_grpc
from edgectl.launcher import Cluster
from edgepop import buggify
from edgepop.lifecycle import STORAGE_DIR_NAME
from edgepop.storage import BOOT_ID_ENV
from tests.conftest import ClusterFactory, poll_until
from tests.integration.kvclient import OPTIONS, converged, dump_origin
from tests.integration.objclient import CLIENT_RETRYABLE
from tests.integration.powerloss import (
    RestoredFile,
    build_shim,
    describe,
    pull_the_plug,
    restore_synced_state,
    run_under_shim,
)

pytestmark = pytest.mark.cluster

REGION = "london"
TOPOLOGY: dict[str, Any] = {
    "emulate_delay": False,
    "regions": [{"name": "us-east-1"}, {"name": REGION, "pop_nodes": 2}],
}
NAMESPACE = "powerloss"
OBJECTS_DIR_NAME = "objects"  # a PoP's Durable Object store, beside its replica
VALUE_PADDING = b"." * 200  # values of a realistic size, so pages fill and split
# Placed in london (the callers' region): owner and standby are its two PoPs.
COUNTERS = ("powerloss-a", "powerloss-b")
# Per phase: enough to span many group commits and replica flushes (about a second
# each), few enough to keep the test in seconds.
KV_ACKS_PER_PHASE = 500
INCREMENTS_PER_PHASE = 100  # per Counter
INCREMENTS_AFTER_RESTART = 5
CALL_TIMEOUT_S = 2.0
LOAD_TIMEOUT_S = 30.0
RECOVERY_TIMEOUT_S = 30.0
CLIENT_JOIN_TIMEOUT_S = 10.0
FINDINGS_SHOWN = 3  # of each kind, in the printed summary


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shim(tmp_path_factory.mktemp("powerloss-shim"))


# -- clients ---------------------------------------------------------------------------------


class Client(threading.Thread):
    """One call at a time through one PoP until stopped, or until the first failure once
    `plug_pulled` is set (that call was in flight at the loss). A failed call is not
    retried: it may or may not have taken effect, and only acknowledged calls are checked.
    `failed` counts failures before the loss."""

    def __init__(
        self, cluster: Cluster, pop: str, phase: str, plug_pulled: threading.Event
    ) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.pop = pop
        self.phase = phase  # in every key and request id: unique across phases
        self.plug_pulled = plug_pulled
        self.stop = threading.Event()
        self.failed = 0

    def run(self) -> None:
        with self.cluster.channel(self.cluster.node(self.pop).grpc_address, OPTIONS) as channel:
            stub = pop_pb2_grpc.PopStub(channel)
            index = 0
            while not self.stop.is_set():
                try:
                    self.attempt(stub, index)
                except grpc.RpcError:
                    if self.plug_pulled.is_set():
                        return
                    self.failed += 1
                index += 1

    def attempt(self, stub: pop_pb2_grpc.PopStub, index: int) -> None:
        raise NotImplementedError

    def acknowledged_count(self) -> int:
        raise NotImplementedError


class KvWriter(Client):
    """New keys through one PoP; `acknowledged`: key -> (value, seq) of each reply."""

    def __init__(
        self, cluster: Cluster, pop: str, phase: str, plug_pulled: threading.Event
    ) -> None:
        super().__init__(cluster, pop, phase, plug_pulled)
        self.acknowledged: dict[str, tuple[bytes, int]] = {}

    def attempt(self, stub: pop_pb2_grpc.PopStub, index: int) -> None:
        key = f"{self.phase}-{self.pop}-{index:06d}"
        value = key.encode() + VALUE_PADDING
        request = kv_pb2.KvPutRequest(namespace=NAMESPACE, key=key, value=value)
        seq = stub.KvPut(request, timeout=CALL_TIMEOUT_S).seq
        self.acknowledged[key] = (value, int(seq))

    def acknowledged_count(self) -> int:
        return len(self.acknowledged)


class Incrementer(Client):
    """`increment` on one Counter through one PoP; `acknowledged`: each value returned."""

    def __init__(
        self, cluster: Cluster, pop: str, phase: str, plug_pulled: threading.Event, name: str
    ) -> None:
        super().__init__(cluster, pop, phase, plug_pulled)
        self.name = name
        self.acknowledged: list[int] = []

    def attempt(self, stub: pop_pb2_grpc.PopStub, index: int) -> None:
        request = objects_pb2.ObjectCallRequest(
            namespace="Counter",
            name=self.name,
            method="increment",
            request_id=f"{self.phase}-{self.name}-{index}",
        )
        response = stub.ObjectCall(request, timeout=CALL_TIMEOUT_S)
        self.acknowledged.append(int(json.loads(response.result_json)))

    def acknowledged_count(self) -> int:
        return len(self.acknowledged)


def _run_clients(
    cluster: Cluster, phase: str, plug_pulled: threading.Event, end: Callable[[], object]
) -> list[Client]:
    """A KV writer and a Counter incrementer per PoP, until each phase target is
    acknowledged; then `end()` runs with the clients still calling, and they stop."""
    pops = [pop.name for pop in cluster.pops]
    clients: list[Client] = [KvWriter(cluster, pop, phase, plug_pulled) for pop in pops]
    clients += [
        Incrementer(cluster, pop, phase, plug_pulled, name)
        for pop, name in zip(pops, COUNTERS, strict=True)
    ]
    for client in clients:
        client.start()
    try:
        poll_until(
            lambda: (
                sum(c.acknowledged_count() for c in clients if isinstance(c, KvWriter))
                >= KV_ACKS_PER_PHASE
                and all(
                    c.acknowledged_count() >= INCREMENTS_PER_PHASE
                    for c in clients
                    if isinstance(c, Incrementer)
                )
            ),
            timeout=LOAD_TIMEOUT_S,
            what=f"acknowledged writes ({phase})",
        )
        assert all(client.is_alive() for client in clients), "a client stopped early"
        end()
    finally:
        for client in clients:
            client.stop.set()
        for client in clients:
            client.join(CLIENT_JOIN_TIMEOUT_S)
    return clients


# -- the check ---------------------------------------------------------------------------------


@dataclass
class Findings:
    """Acknowledged writes the cluster no longer shows after the power loss."""

    lost_writes: list[str] = field(default_factory=list)  # KV keys
    lost_increments: list[str] = field(default_factory=list)
    repeated_values: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = []
        for kind in fields(self):
            found: list[str] = getattr(self, kind.name)
            shown = ", ".join(found[:FINDINGS_SHOWN]) + (", ..." if found[FINDINGS_SHOWN:] else "")
            parts.append(f"{kind.name}: {len(found)}" + (f" ({shown})" if found else ""))
        return "; ".join(parts)


def _call_until_answered(cluster: Cluster, name: str, method: str, request_id: str = "") -> int:
    """One Counter call, retried (same request id) while the restarted cluster settles."""
    pops = [pop.name for pop in cluster.pops]
    turns = itertools.count()
    answer: list[int] = []

    def attempt() -> bool:
        # Entry PoPs in turn: one still settling after the restart does not stall the check.
        pop = pops[next(turns) % len(pops)]
        request = objects_pb2.ObjectCallRequest(
            namespace="Counter", name=name, method=method, request_id=request_id
        )
        with cluster.channel(cluster.node(pop).grpc_address, OPTIONS) as channel:
            try:
                response = pop_pb2_grpc.PopStub(channel).ObjectCall(request, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as error:
                if error.code() not in CLIENT_RETRYABLE:
                    raise
                return False
        answer.append(int(json.loads(response.result_json)))
        return True

    poll_until(attempt, timeout=RECOVERY_TIMEOUT_S, interval=0.1, what=f"{method} on {name}")
    return answer[0]


def _check(cluster: Cluster, clients: list[Client]) -> Findings:
    findings = Findings()
    # The replicas rebuild from the origin after the reboot; they must end equal to it.
    poll_until(
        lambda: converged(cluster),
        timeout=RECOVERY_TIMEOUT_S,
        interval=0.3,
        what="every replica equal to the origin",
    )
    _, records = dump_origin(cluster)
    stored = {r.key: (r.value, r.seq) for r in records if r.namespace == NAMESPACE}
    for writer in (client for client in clients if isinstance(client, KvWriter)):
        for key, (value, seq) in sorted(writer.acknowledged.items()):
            if stored.get(key) != (value, seq):
                findings.lost_writes.append(key)

    for name in COUNTERS:
        # Acknowledged values in the order the phases ran: one client at a time per Counter.
        handed_out = [
            value
            for client in clients
            if isinstance(client, Incrementer) and client.name == name
            for value in client.acknowledged
        ]
        if len(set(handed_out)) != len(handed_out):
            findings.repeated_values.append(f"{name}: a value twice before the loss")
        count = _call_until_answered(cluster, name, "get")
        if count < max(handed_out):
            findings.lost_increments.append(
                f"{name} counts {count}, {max(handed_out)} was acknowledged"
            )
        for index in range(INCREMENTS_AFTER_RESTART):
            given = _call_until_answered(cluster, name, "increment", f"after-{name}-{index}")
            if given in handed_out:
                findings.repeated_values.append(f"{name} hands out {given} again")
    return findings


# -- the scenario ------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one run of the scenario saw."""

    cluster: Cluster
    findings: Findings
    restored: list[RestoredFile]
    before_restart: list[Client]  # step 1: made durable by the clean stop, whatever the build
    before_loss: list[Client]  # step 2: durable only if the stores sync


def _power_loss_scenario(
    cluster_factory: ClusterFactory, shim: Path, monkeypatch: pytest.MonkeyPatch
) -> Outcome:
    started = time.monotonic()
    cluster = cluster_factory(TOPOLOGY, start=False)
    run_under_shim(monkeypatch, shim, cluster.data_dir)
    cluster.up()
    plug_pulled = threading.Event()

    def power_loss() -> None:
        plug_pulled.set()
        pull_the_plug(cluster)

    before_restart = _run_clients(cluster, "p1", plug_pulled, end=lambda: None)
    cluster.down()
    cluster.up()
    before_loss = _run_clients(cluster, "p2", plug_pulled, end=power_loss)
    lost_at = time.monotonic()
    restored = restore_synced_state(cluster.data_dir)
    print(f"\npower loss, what each data file kept:\n{describe(restored, cluster.data_dir)}")

    monkeypatch.setenv(BOOT_ID_ENV, f"after-power-loss-{uuid.uuid4().hex[:8]}")
    cluster.up()
    clients = [*before_restart, *before_loss]
    findings = _check(cluster, clients)
    for phase, phase_clients in (
        ("before the restart", before_restart),
        ("before the loss", before_loss),
    ):
        writes = sum(c.acknowledged_count() for c in phase_clients if isinstance(c, KvWriter))
        increments = sum(
            c.acknowledged_count() for c in phase_clients if isinstance(c, Incrementer)
        )
        failed = sum(client.failed for client in phase_clients)
        print(f"{phase}: {writes} KV writes, {increments} increments acknowledged, {failed} failed")
    print(
        f"{lost_at - started:.1f} s to the loss (two starts, a clean stop, load),"
        f" {time.monotonic() - lost_at:.1f} s to restore, restart and check\n"
        f"findings: {findings.summary()}"
    )
    return Outcome(cluster, findings, restored, before_restart, before_loss)


def _durable_stores(cluster: Cluster) -> set[Path]:
    """The data files of the stores that answer only once a commit is durable."""
    return {
        Path(cluster.origin.data_dir) / STORAGE_DIR_NAME / "data.mdb",
        Path(cluster.control_plane.data_dir) / STORAGE_DIR_NAME / "data.mdb",
        *(Path(pop.data_dir) / OBJECTS_DIR_NAME / "data.mdb" for pop in cluster.pops),
    }


def _keys(clients: list[Client]) -> set[str]:
    return {key for c in clients if isinstance(c, KvWriter) for key in c.acknowledged}


# -- the tests ---------------------------------------------------------------------------------


def test_every_acknowledged_write_survives_a_power_loss_of_the_whole_machine(
    cluster_factory: ClusterFactory, shim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome = _power_loss_scenario(cluster_factory, shim, monkeypatch)
    assert outcome.findings == Findings(), outcome.findings.summary()
    # The loss was real: unsynced writes were dropped (at least the replicas', which flush
    # once a second while the clients kept writing) ...
    assert any(file.dropped for file in outcome.restored), "the power loss took nothing"
    # ... and every store that acknowledges had synced through the shim (a shim that saw
    # nothing would have left them empty, and the check above would have failed).
    synced = {file.path for file in outcome.restored if file.synced}
    assert _durable_stores(outcome.cluster) <= synced


def test_the_check_finds_the_lost_writes_when_stores_commit_without_fsync(
    cluster_factory: ClusterFactory, shim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(buggify.ENV_VAR, buggify.NO_FSYNC)
    outcome = _power_loss_scenario(cluster_factory, shim, monkeypatch)
    lost = set(outcome.findings.lost_writes)
    # Exactly what was acknowledged after the last sync (the clean stop) is gone: every KV
    # write of the second phase, none of the first.
    assert lost == _keys(outcome.before_loss), outcome.findings.summary()
    assert not lost & _keys(outcome.before_restart)
    assert outcome.findings.lost_increments, "increments were acknowledged unsynced"
    assert outcome.findings.repeated_values, "a Counter that forgot hands values out again"
