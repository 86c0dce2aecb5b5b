"""Fixtures for unit tests: a real LMDB environment in a temp dir, no sockets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgepop.kvstore import KvStore
from edgepop.storage import Storage

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
