"""Shared fixtures: real clusters of real processes on loopback, in temp dirs.

- `cluster_factory` starts a fresh cluster per test (for tests that break things);
- `shared_cluster` is the default topology with the seed's delays, started once per
  session for tests that only read or add keys of their own;
- `fast_cluster` is a small cluster with delay emulation off, started once per session,
  for replication workloads that would otherwise spend minutes in emulated WAN time.
Every cluster is stopped by PID at teardown. Tests wait with `poll_until`, never a bare
sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgectl.launcher import Cluster

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


ClusterFactory = Callable[..., Cluster]


def _make_factory(root: Path, started: list[Cluster]) -> ClusterFactory:
    counter = iter(range(1_000_000))

    def make(
        topology: dict[str, Any] | None = None,
        *,
        role_args: dict[str, list[str]] | None = None,
        node_args: dict[str, list[str]] | None = None,
        start: bool = True,
    ) -> Cluster:
        data_dir = root / f"cluster-{next(counter)}"
        data_dir.mkdir(parents=True)
        topology_file = None
        if topology is not None:
            topology_file = data_dir / "topology.yaml"
            topology_file.write_text(yaml.safe_dump(topology))
        cluster = Cluster(
            data_dir, topology_file=topology_file, role_args=role_args, node_args=node_args
        )
        started.append(cluster)
        if start:
            cluster.up()
        return cluster

    return make


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[ClusterFactory]:
    started: list[Cluster] = []
    yield _make_factory(tmp_path, started)
    for cluster in started:
        cluster.down()


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started: list[Cluster] = []
    cluster = _make_factory(tmp_path_factory.mktemp("shared"), started)()
    yield cluster
    cluster.down()


@pytest.fixture(scope="session")
def fast_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started: list[Cluster] = []
    cluster = _make_factory(tmp_path_factory.mktemp("fast"), started)(FAST_TOPOLOGY)
    yield cluster
    cluster.down()
