"""Replica apply rules: every log entry exactly once, in order, with its position."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.v1 import kv_pb2
from edgepop.errors import ReplicationGapError
from edgepop.kvstore import KvStore, Record
from pop_node.replica import (
    apply_batch,
    apply_snapshot_part,
    begin_snapshot,
    complete_as_of,
    finish_snapshot,
    plan_batch,
    read_position,
)

NOW = 1_700_000_000.0


def _entry(seq: int, key: str, value: bytes = b"v", op: int = kv_pb2.LOG_OP_PUT) -> kv_pb2.LogEntry:
    return kv_pb2.LogEntry(seq=seq, namespace="app", op=op, key=key, value=value)  # type: ignore[arg-type]


def _position(store: KvStore) -> tuple[int, float]:
    with store.storage.read() as txn:
        return read_position(store, txn)


def _value(store: KvStore, key: str) -> bytes | None:
    with store.storage.read() as txn:
        record = store.get(txn, "app", key.encode(), NOW)
    return None if record is None else record.value


# -- plan_batch ------------------------------------------------------------------------------


def test_plan_applies_a_batch_that_continues_the_replica() -> None:
    assert plan_batch(4, [5, 6, 7]) == slice(0, 3)


def test_plan_skips_the_already_applied_prefix_of_a_resumed_stream() -> None:
    chosen = plan_batch(6, [5, 6, 7, 8])
    assert chosen == slice(2, 4)
    assert [5, 6, 7, 8][chosen] == [7, 8]


def test_plan_of_a_fully_applied_batch_is_empty() -> None:
    seqs = [3, 4, 5]
    assert seqs[plan_batch(5, seqs)] == []
    assert seqs[plan_batch(9, seqs)] == []


def test_plan_of_an_empty_batch_is_empty() -> None:
    assert [][plan_batch(0, [])] == []
    assert [][plan_batch(17, [])] == []


def test_plan_refuses_a_batch_that_starts_past_the_next_seq() -> None:
    with pytest.raises(ReplicationGapError, match="expected seq 5, got 6"):
        plan_batch(4, [6, 7])


def test_plan_refuses_a_gap_inside_the_batch() -> None:
    with pytest.raises(ReplicationGapError, match="expected seq 6, got 7"):
        plan_batch(4, [5, 7, 8])


def test_plan_refuses_a_gap_after_the_skipped_prefix() -> None:
    with pytest.raises(ReplicationGapError, match="expected seq 4, got 5"):
        plan_batch(3, [2, 3, 5])


def test_first_batch_of_a_new_replica_must_start_at_seq_1() -> None:
    assert plan_batch(0, [1, 2]) == slice(0, 2)
    with pytest.raises(ReplicationGapError):
        plan_batch(0, [2, 3])


@given(
    applied=st.integers(0, 50),
    start=st.integers(1, 60),
    length=st.integers(0, 20),
)
def test_plan_of_a_consecutive_batch_applies_exactly_the_unapplied_seqs(
    applied: int, start: int, length: int
) -> None:
    seqs = list(range(start, start + length))
    if start > applied + 1 and length > 0:
        with pytest.raises(ReplicationGapError):
            plan_batch(applied, seqs)
        return
    assert seqs[plan_batch(applied, seqs)] == [seq for seq in seqs if seq > applied]


# -- apply_batch / read_position -------------------------------------------------------------


def test_new_replica_has_position_zero(replica_store: KvStore) -> None:
    assert _position(replica_store) == (0, 0.0)


def test_apply_batch_writes_entries_and_the_applied_seq_together(replica_store: KvStore) -> None:
    entries = [
        _entry(1, "a", b"1"),
        _entry(2, "b", b"2"),
        _entry(3, "a", op=kv_pb2.LOG_OP_DELETE),
    ]
    applied = replica_store.storage.write_sync(
        lambda txn: apply_batch(replica_store, txn, entries, NOW)
    )
    assert applied == 3
    assert _position(replica_store) == (3, NOW)
    assert _value(replica_store, "a") is None
    assert _value(replica_store, "b") == b"2"
    with replica_store.storage.read() as txn:
        record = replica_store.get(txn, "app", b"b", NOW)
    assert record is not None and record.seq == 2


def test_apply_batch_without_complete_as_of_keeps_the_previous_one(
    replica_store: KvStore,
) -> None:
    store = replica_store
    store.storage.write_sync(lambda txn: apply_batch(store, txn, [_entry(1, "a")], NOW))
    store.storage.write_sync(lambda txn: apply_batch(store, txn, [_entry(2, "b")], 0.0))
    assert _position(store) == (2, NOW)


def test_failed_apply_leaves_neither_data_nor_position(replica_store: KvStore) -> None:
    store = replica_store
    store.storage.write_sync(lambda txn: apply_batch(store, txn, [_entry(1, "a")], NOW))
    bad = [_entry(2, "b"), kv_pb2.LogEntry(seq=3, namespace="app", key="c")]  # no op
    with pytest.raises(ValueError):
        store.storage.write_sync(lambda txn: apply_batch(store, txn, bad, NOW + 1))
    assert _position(store) == (1, NOW)
    assert _value(store, "b") is None


def test_planned_resumed_batch_is_applied_once(replica_store: KvStore) -> None:
    store = replica_store
    first = [_entry(1, "k", b"one"), _entry(2, "k", b"two")]
    store.storage.write_sync(lambda txn: apply_batch(store, txn, first, NOW))
    # The stream resumes and repeats seq 2 before sending seq 3.
    resumed = [_entry(2, "k", b"two"), _entry(3, "k", b"three")]
    applied_seq, _ = _position(store)
    planned = resumed[plan_batch(applied_seq, [entry.seq for entry in resumed])]
    assert [entry.seq for entry in planned] == [3]
    store.storage.write_sync(lambda txn: apply_batch(store, txn, planned, NOW + 1))
    assert _position(store) == (3, NOW + 1)
    assert _value(store, "k") == b"three"


def test_snapshot_replaces_the_replica_and_sets_its_position(replica_store: KvStore) -> None:
    store = replica_store
    store.storage.write_sync(
        lambda txn: apply_batch(store, txn, [_entry(1, "stale"), _entry(2, "also-stale")], NOW)
    )
    records = [Record("app", "fresh", b"f", "", 0, 90).to_pb()]

    def install(txn: object) -> None:
        begin_snapshot(store, txn)
        apply_snapshot_part(store, txn, records)
        finish_snapshot(store, txn, 100, NOW + 5)

    store.storage.write_sync(install)
    assert _position(store) == (100, NOW + 5)
    assert _value(store, "stale") is None
    assert _value(store, "fresh") == b"f"


# -- complete_as_of ----------------------------------------------------------------------------


def test_complete_as_of_takes_the_newest_message_that_left_nothing_pending() -> None:
    positions = [(10, NOW), (12, NOW + 1.0), (20, NOW + 2.0)]
    # Holding through 12: the second message's origin time; the third still had 13-20.
    assert complete_as_of(12, positions, last_commit_time=0.0) == NOW + 1.0


def test_complete_as_of_under_sustained_load_follows_the_last_commit_time() -> None:
    # The head is always ahead of what arrived, so no message left nothing pending.
    positions = [(30, NOW + 5.0), (40, NOW + 6.0)]
    assert complete_as_of(25, positions, last_commit_time=NOW + 4.5) == NOW + 4.5


def test_complete_as_of_is_zero_when_nothing_new_is_known() -> None:
    assert complete_as_of(5, [(9, NOW)], last_commit_time=0.0) == 0.0


@given(
    st.integers(0, 50),
    st.lists(st.tuples(st.integers(0, 60), st.floats(0, 1e4)), max_size=8),
    st.floats(0, 1e4),
)
def test_complete_as_of_never_claims_an_unheld_head(
    last_seq: int, positions: list[tuple[int, float]], last_commit_time: float
) -> None:
    bound = complete_as_of(last_seq, positions, last_commit_time)
    assert bound >= last_commit_time
    if bound > last_commit_time:
        # Only a message that left nothing pending may move the bound past the last commit.
        assert any(head <= last_seq and time == bound for head, time in positions)
