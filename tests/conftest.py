"""Shared fixtures: real clusters of real processes on loopback, in temp dirs.

- `cluster_factory` starts a fresh cluster per test (for tests that break things);
- `shared_cluster` is the default topology with the seed's delays, started once per
  session for tests that only read or add keys of their own;
- `fast_cluster` is a small cluster with delay emulation off, started once per session,
  for replication workloads that would otherwise spend minutes in emulated WAN time.
Every cluster is stopped by PID at teardown. Tests wait with `poll_until`, never a bare
sleep.

Mutual TLS: `cluster_factory(..., tls=True)` starts a TLS cluster; with
`EDGEPOP_TEST_TLS=1` every fixture cluster runs TLS (`make test-tls` runs the foundation
tests that way). Helpers take channels from `Cluster.channel`, which presents the
cluster's client certificate. Some tests still open `grpc.insecure_channel` by hand; in
TLS mode those calls are routed to an mTLS channel with the client certificate of the
cluster that owns the address (addresses of no TLS cluster stay plaintext). Because a
TLS node refuses plaintext, a call site the routing missed fails loudly, never quietly
bypasses TLS. `PLAINTEXT_CHANNEL` is the unrouted original, for tests of refusal.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import yaml

from edgectl.launcher import PORT_RANGE_ENV, Cluster, ephemeral_low, picked_port_range

TLS_ENV = "EDGEPOP_TEST_TLS"
# Whether fixture clusters run mutual TLS unless a test says otherwise.
TLS_DEFAULT = os.environ.get(TLS_ENV, "") not in ("", "0")
PLAINTEXT_CHANNEL = grpc.insecure_channel
PLAINTEXT_AIO_CHANNEL = grpc.aio.insecure_channel

FAST_TOPOLOGY: dict[str, Any] = {
    "emulate_delay": False,
    "regions": [
        {"name": "us-east-1"},
        {"name": "tokyo", "pop_nodes": 2},
        {"name": "london", "pop_nodes": 1},
    ],
}


def poll_until(
    condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Call `condition` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


T = TypeVar("T")

# A delay measurement that misses its target is taken once more on fresh pairs, and fails
# its test only if both miss: on a shared VM a stretch of steal moves one block of pairs
# by more than the tolerance while a rerun of the same code passes; an emulator adding a
# steady excess misses both (docs/ARCHITECTURE.md, "Testing approach").
TIMING_MEASUREMENTS = 2


def measured_again_if_missed(
    measure: Callable[[], T], missed: Callable[[T], bool], first: T | None = None
) -> list[T]:
    """`measure()` (or `first`, a measurement already taken), repeated while `missed` says
    so, up to TIMING_MEASUREMENTS in all: every measurement, the one that counts last."""
    measurements = [first if first is not None else measure()]
    while missed(measurements[-1]) and len(measurements) < TIMING_MEASUREMENTS:
        measurements.append(measure())
    return measurements


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (make test's first phase), each worker and the processes it
    starts pick ports from a range of their own: two clusters starting at once never
    probe the same free port and then race to bind it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1", ...
    if worker is None or PORT_RANGE_ENV in os.environ:
        return
    index, count = int(worker.removeprefix("gw")), int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    low, high = picked_port_range(None, ephemeral_low())
    span = (high - low) // count
    os.environ[PORT_RANGE_ENV] = f"{low + index * span}-{low + (index + 1) * span}"


# The longest files (1-4 minutes each, mostly waiting on leases, caches and clocks)
# first: make test's parallel phase hands files to its workers in collection order, so
# these start at once on different workers and the short files even out the end.
LONGEST_FIRST = (
    "test_objects_failover.py",
    "test_objects_failover_sequences.py",
    "test_fuzz_rpc.py",
    "test_cloudflare_kv_mode.py",
    "test_cron_triggers.py",
    "test_prometheus.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


ClusterFactory = Callable[..., Cluster]

# TLS clusters of fixtures that are still up: whose client certificate a channel uses.
_tls_clusters: list[Cluster] = []


def _make_factory(root: Path, started: list[Cluster]) -> ClusterFactory:
    counter = iter(range(1_000_000))

    def make(
        topology: dict[str, Any] | None = None,
        *,
        role_args: dict[str, list[str]] | None = None,
        node_args: dict[str, list[str]] | None = None,
        start: bool = True,
        tls: bool | None = None,
    ) -> Cluster:
        """A cluster in a fresh dir; `tls` None = the session's default (TLS_DEFAULT)."""
        data_dir = root / f"cluster-{next(counter)}"
        data_dir.mkdir(parents=True)
        topology_file = None
        if topology is not None:
            topology_file = data_dir / "topology.yaml"
            topology_file.write_text(yaml.safe_dump(topology))
        cluster = Cluster(
            data_dir,
            topology_file=topology_file,
            role_args=role_args,
            node_args=node_args,
            tls=TLS_DEFAULT if tls is None else tls,
        )
        started.append(cluster)
        if cluster.tls:
            _tls_clusters.append(cluster)
        if start:
            cluster.up()
        return cluster

    return make


def _stop(started: list[Cluster]) -> None:
    for cluster in started:
        cluster.down()
        if cluster in _tls_clusters:
            _tls_clusters.remove(cluster)


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[ClusterFactory]:
    started: list[Cluster] = []
    yield _make_factory(tmp_path, started)
    _stop(started)


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started: list[Cluster] = []
    cluster = _make_factory(tmp_path_factory.mktemp("shared"), started)()
    yield cluster
    _stop(started)


@pytest.fixture(scope="session")
def fast_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started: list[Cluster] = []
    cluster = _make_factory(tmp_path_factory.mktemp("fast"), started)(FAST_TOPOLOGY)
    yield cluster
    _stop(started)


# -- TLS mode: plaintext call sites get the owning cluster's client certificate -------------


def _tls_cluster_at(address: str) -> Cluster | None:
    for cluster in reversed(_tls_clusters):
        if any(node.grpc_address == address for node in cluster.nodes.values()):
            return cluster
    return None


def _routed_channel(
    target: str, options: Sequence[tuple[str, Any]] | None = None, compression: Any = None
) -> grpc.Channel:
    cluster = _tls_cluster_at(target)
    if cluster is None or cluster.client_tls is None:
        return PLAINTEXT_CHANNEL(target, options, compression)
    return grpc.secure_channel(target, cluster.client_tls.channel_credentials, options, compression)


def _routed_aio_channel(
    target: str,
    options: Sequence[tuple[str, Any]] | None = None,
    compression: Any = None,
    interceptors: Any = None,
) -> grpc.aio.Channel:
    cluster = _tls_cluster_at(target)
    if cluster is None or cluster.client_tls is None:
        return PLAINTEXT_AIO_CHANNEL(target, options, compression, interceptors)
    return grpc.aio.secure_channel(
        target, cluster.client_tls.channel_credentials, options, compression, interceptors
    )


@pytest.fixture(scope="session", autouse=True)
def _route_plaintext_channels_in_tls_mode() -> Iterator[None]:
    """With EDGEPOP_TEST_TLS=1, `grpc.insecure_channel` to a TLS cluster becomes mTLS."""
    if not TLS_DEFAULT:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(grpc, "insecure_channel", _routed_channel)
        patch.setattr(grpc.aio, "insecure_channel", _routed_aio_channel)
        yield
