"""How a node tunes Python's cyclic garbage collector when it starts serving
(`edgepop.lifecycle.settle_collector`)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from edgepop.lifecycle import YOUNG_COLLECTION_THRESHOLD, settle_collector


@pytest.fixture
def collector_restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("collector_restored")
def test_what_exists_at_start_is_frozen_and_young_collections_wait_longer() -> None:
    gc.unfreeze()
    long_lived = [object() for _ in range(10)], {"config": 1}
    _, middle, full = gc.get_threshold()
    settle_collector()
    assert gc.get_freeze_count() > 0
    assert not any(long_lived[1] is tracked for tracked in gc.get_objects())
    # Only the young threshold changes: the older generations keep their ratios.
    assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, middle, full)
    assert YOUNG_COLLECTION_THRESHOLD > 700  # Python's default


@pytest.mark.usefixtures("collector_restored")
def test_cyclic_garbage_made_after_start_is_still_collected() -> None:
    settle_collector()

    class Node:
        def __init__(self) -> None:
            self.peer: Node | None = None

    first, second = Node(), Node()
    first.peer, second.peer = second, first
    del first, second
    assert gc.collect() >= 2
