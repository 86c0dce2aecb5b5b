"""Replica apply rules: each log entry exactly once, in order. Pure decisions + txn work.

`plan_batch` decides which entries of an incoming batch to apply given `applied_seq`:
entries already applied are skipped (a resumed stream may repeat its first message);
a gap is an error and nothing of the batch is applied. `apply_batch` writes the chosen
entries and the new applied_seq in the same LMDB transaction, so a crash leaves either
both or neither.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from edge.v1 import kv_pb2
from edgepop.errors import ReplicationGapError
from edgepop.kvstore import KvStore, Record

APPLIED_SEQ_KEY = b"applied_seq"
# Origin time up to which this replica was known complete when it last committed.
COMPLETE_AS_OF_KEY = b"complete_as_of"
_F64 = struct.Struct(">d")


def plan_batch(applied_seq: int, seqs: Sequence[int]) -> slice:
    """The slice of a batch (with seqs `seqs`) to apply on top of `applied_seq`."""
    start = 0
    while start < len(seqs) and seqs[start] <= applied_seq:
        start += 1
    expected = applied_seq + 1
    for seq in seqs[start:]:
        if seq != expected:
            raise ReplicationGapError(
                f"batch does not continue the replica: expected seq {expected}, got {seq}"
            )
        expected += 1
    return slice(start, len(seqs))


def complete_as_of(
    last_seq: int, positions: Sequence[tuple[int, float]], last_commit_time: float
) -> float:
    """The origin time before which a replica holding every entry through `last_seq`
    holds every committed write (0.0: nothing new is known).

    `positions` are the (head_seq, origin_time) of the messages just received: one whose
    head was at or below `last_seq` left nothing pending at its origin time. Under a
    sustained load the head is always a little ahead, so the commit time of the last
    entry held also counts: the origin commits one batch at a time, so every write
    committed before it has a lower seq and is held too.
    """
    caught_up = max(
        (origin_time for head, origin_time in positions if head <= last_seq), default=0.0
    )
    return max(caught_up, last_commit_time)


def read_position(store: KvStore, txn: Any) -> tuple[int, float]:
    """(applied_seq, complete_as_of) as last committed."""
    applied = store.get_u64(txn, APPLIED_SEQ_KEY)
    raw = txn.get(COMPLETE_AS_OF_KEY, db=store.meta)
    return applied, (_F64.unpack(raw)[0] if raw is not None else 0.0)


def _write_position(store: KvStore, txn: Any, applied_seq: int, complete_as_of: float) -> None:
    store.put_u64(txn, APPLIED_SEQ_KEY, applied_seq)
    if complete_as_of:
        txn.put(COMPLETE_AS_OF_KEY, _F64.pack(complete_as_of), db=store.meta)


def apply_batch(
    store: KvStore,
    txn: Any,
    entries: Sequence[kv_pb2.LogEntry],
    complete_as_of: float,
) -> int:
    """Apply planned entries and record the new applied seq; returns it."""
    store.apply_all(txn, entries)
    applied_seq = entries[-1].seq
    _write_position(store, txn, applied_seq, complete_as_of)
    return applied_seq


def begin_snapshot(store: KvStore, txn: Any) -> None:
    store.clear(txn)


def apply_snapshot_part(store: KvStore, txn: Any, records: Sequence[kv_pb2.KvRecord]) -> None:
    for record in records:
        store.put(txn, Record.from_pb(record))


def finish_snapshot(store: KvStore, txn: Any, snapshot_seq: int, complete_as_of: float) -> None:
    _write_position(store, txn, snapshot_seq, complete_as_of)
