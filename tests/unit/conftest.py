"""Fixtures for unit tests: a real LMDB environment in a temp dir, no sockets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgepop.durable import DurableObject
from edgepop.kvstore import KvStore
from edgepop.lease import Lease
from edgepop.metrics import PopMetrics
from edgepop.storage import Storage
from pop_node.objects.host import ObjectHost

# Small map: unit tests store little, and a small map keeps temp dirs cheap.
UNIT_MAP_SIZE_BYTES = 256 * 1024**2


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    storage = Storage(tmp_path / "lmdb", UNIT_MAP_SIZE_BYTES)
    yield storage
    storage.close()


@pytest.fixture
def origin_store(storage: Storage) -> KvStore:
    """A store as the origin opens it (with the expiry index)."""
    return KvStore(storage, track_expiry=True)


@pytest.fixture
def replica_store(storage: Storage) -> KvStore:
    """A store as a PoP replica opens it (no expiry index)."""
    return KvStore(storage, track_expiry=False)


def object_host(
    storage: Storage,
    classes: dict[str, type[DurableObject]],
    *,
    node_name: str = "solo-1",
    region: str = "tokyo",
    lease: Callable[[], Lease | None] = lambda: None,
) -> ObjectHost:
    """A Durable Object host on `storage` with no control plane and no peers: a one-PoP
    playground unless `lease` says otherwise."""
    env: Any = None
    return ObjectHost(
        node_name=node_name,
        region=region,
        storage=storage,
        metrics=PopMetrics(node_name, region),
        classes=classes,
        env=env,
        lease=lease,
        control_plane=lambda: None,
        internal_metadata=(),
    )
