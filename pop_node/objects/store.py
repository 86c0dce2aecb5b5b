"""LMDB layout of Durable Object storage on one node (owned objects and standby copies).

  do_data   okey(40) + key  -> value        okey = namespace hash(8) + object id(32)
  do_meta   okey            -> epoch(8) + seq(8) + namespace
  do_alarms okey            -> alarm time (f64), for objects with an alarm set

`seq` counts the object's commits; `epoch` is the newest ownership epoch this node has
seen for the object. A commit or replica update from an older epoch is refused: storage
itself guarantees that a deposed owner's writes are never accepted. Objects live in
their own environment, synced on every commit (unlike the KV replica, whose data the
origin can always send again).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from edgepop.errors import EdgeError
from edgepop.kvstore import namespace_hash

OKEY_BYTES = 40
# 40-byte object prefix + key <= 511 (LMDB's key limit).
OBJECT_KEY_BYTES_MAX = 400
OBJECT_VALUE_BYTES_MAX = 128 * 1024
# Keys the runtime keeps for itself (alarm, request ids) start with this byte.
INTERNAL_PREFIX = b"\x00"
ALARM_KEY = INTERNAL_PREFIX + b"alarm"
_META = struct.Struct(">QQ")
_F64 = struct.Struct(">d")


class StaleEpochError(EdgeError):
    """This node's epoch for the object is older than one already seen: not the owner."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class StaleCopyError(EdgeError):
    """This node's copy of the object misses acknowledged writes: it must not own it."""

    code = grpc.StatusCode.UNAVAILABLE


def okey(namespace: str, object_id: bytes) -> bytes:
    return namespace_hash(namespace) + object_id


@dataclass(frozen=True)
class ObjectMeta:
    epoch: int = 0
    seq: int = 0


# A change: (key, value) puts, (key, None) deletes.
Write = tuple[bytes, bytes | None]


class ObjectStore:
    def __init__(self, storage: Any) -> None:
        self.storage = storage
        self.data = storage.db("do_data")
        self.meta = storage.db("do_meta")
        self.alarms = storage.db("do_alarms")

    # -- reads -------------------------------------------------------------------------

    def read_meta(self, txn: Any, object_key: bytes) -> ObjectMeta:
        raw = txn.get(object_key, db=self.meta)
        if raw is None:
            return ObjectMeta()
        epoch, seq = _META.unpack_from(raw)
        return ObjectMeta(epoch, seq)

    def get(self, txn: Any, object_key: bytes, key: bytes) -> bytes | None:
        value: bytes | None = txn.get(object_key + key, db=self.data)
        return value

    def scan(
        self,
        txn: Any,
        object_key: bytes,
        *,
        start: bytes = b"",
        end: bytes | None = None,
        reverse: bool = False,
    ) -> Iterable[tuple[bytes, bytes]]:
        """Keys in [start, end) of one object, ascending or descending."""
        cursor = txn.cursor(db=self.data)
        low = object_key + start
        high = object_key + end if end is not None else _successor(object_key)
        if not reverse:
            if not cursor.set_range(low):
                return
            for full_key, value in cursor.iternext():
                if full_key >= high:
                    return
                yield full_key[OKEY_BYTES:], value
            return
        # Descending: start just below `high`.
        if cursor.set_range(high):
            if not cursor.prev():
                return
        elif not cursor.last():
            return
        for full_key, value in cursor.iterprev():
            if full_key < low:
                return
            yield full_key[OKEY_BYTES:], value

    def items(self, txn: Any, object_key: bytes) -> list[tuple[bytes, bytes]]:
        return list(self.scan(txn, object_key))

    def alarm(self, txn: Any, object_key: bytes) -> float | None:
        raw = txn.get(object_key, db=self.alarms)
        return None if raw is None else float(_F64.unpack(raw)[0])

    def all_alarms(self, txn: Any) -> list[tuple[bytes, float]]:
        """Every object's alarm: (object key, wall-clock time)."""
        return [
            (bytes(object_key), float(_F64.unpack(raw)[0]))
            for object_key, raw in txn.cursor(db=self.alarms)
        ]

    def namespace_of(self, txn: Any, object_key: bytes) -> str:
        raw = txn.get(object_key, db=self.meta)
        return "" if raw is None else bytes(raw[_META.size :]).decode()

    # -- writes (inside a write transaction) -------------------------------------------

    def _check_epoch(self, txn: Any, object_key: bytes, epoch: int) -> ObjectMeta:
        meta = self.read_meta(txn, object_key)
        if epoch < meta.epoch:
            raise StaleEpochError(
                f"epoch {epoch} is older than epoch {meta.epoch} already seen for this object"
            )
        return meta

    def _write_meta(
        self, txn: Any, object_key: bytes, namespace: str, epoch: int, seq: int
    ) -> None:
        txn.put(object_key, _META.pack(epoch, seq) + namespace.encode(), db=self.meta)

    def _apply(self, txn: Any, object_key: bytes, writes: Sequence[Write]) -> None:
        for key, value in writes:
            if value is None:
                txn.delete(object_key + key, db=self.data)
            else:
                txn.put(object_key + key, value, db=self.data)
            if key == ALARM_KEY:
                if value is None:
                    txn.delete(object_key, db=self.alarms)
                else:
                    txn.put(object_key, value, db=self.alarms)

    def commit(
        self,
        txn: Any,
        namespace: str,
        object_key: bytes,
        epoch: int,
        seq: int,
        writes: Sequence[Write],
    ) -> None:
        """An owner's commit: refused if a newer epoch was seen for the object."""
        self._check_epoch(txn, object_key, epoch)
        self._apply(txn, object_key, writes)
        self._write_meta(txn, object_key, namespace, epoch, seq)

    def claim(
        self, txn: Any, namespace: str, object_key: bytes, epoch: int, synced_seq: int = 0
    ) -> ObjectMeta:
        """Record that this node owns the object at `epoch` (at activation).

        `synced_seq` is the object's seq when its standby was last confirmed: a copy older
        than that lacks acknowledged writes, and this node must not serve it.
        """
        meta = self._check_epoch(txn, object_key, epoch)
        if meta.seq < synced_seq:
            raise StaleCopyError(
                f"this node's copy is at seq {meta.seq}, older than seq {synced_seq} confirmed"
                " on a standby: it lacks acknowledged writes"
            )
        self._write_meta(txn, object_key, namespace, epoch, meta.seq)
        return ObjectMeta(epoch, meta.seq)

    def replace(
        self,
        txn: Any,
        namespace: str,
        object_key: bytes,
        epoch: int,
        seq: int,
        items: Sequence[tuple[bytes, bytes]],
    ) -> None:
        """A full copy from the owner replaces whatever this node held."""
        self._check_epoch(txn, object_key, epoch)
        cursor = txn.cursor(db=self.data)
        if cursor.set_range(object_key):
            while cursor.key()[:OKEY_BYTES] == object_key:
                if not cursor.delete():
                    break
        txn.delete(object_key, db=self.alarms)
        self._apply(txn, object_key, [(key, value) for key, value in items])
        self._write_meta(txn, object_key, namespace, epoch, seq)


def _successor(prefix: bytes) -> bytes:
    """The smallest byte string greater than every string starting with `prefix`."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\xff" * (len(prefix) + 1)
    return stripped[:-1] + bytes([stripped[-1] + 1])


def encode_alarm(at: float) -> bytes:
    return _F64.pack(at)


def decode_alarm(raw: bytes) -> float:
    return float(_F64.unpack(raw)[0])
