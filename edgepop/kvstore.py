"""The LMDB layout of a KV store, shared by the origin and every replica.

Keys may be 512 bytes but LMDB keys stop at 511, and a namespace must fit in front of
them; so a key lives in two sub-databases:

  kv_index    (dupsort) ns_hash(8) + key[:500]  ->  0x00 + key[500:]   (ordering)
  kv_records            record id (below)          ->  encoded record (content)

Walking kv_index in order (key, then duplicate) yields full keys in byte-wise order:
two keys that differ in their first 500 bytes compare by those; otherwise by the tail,
where the 0x00 prefix makes the shorter (empty-tail) key sort first. Because every
node uses the same layout, dumps of the origin and a replica compare byte for byte.

A record id keeps the key's order: ns_hash + 0x00 + key for a key of at most 502 bytes,
ns_hash + 0x01 + key[:486] + blake2b(key)(16) for a longer one (both at most 511). So
neighbouring keys share pages: a batch of 500 keys with a common prefix dirties a few
pages of kv_records instead of one page per key, which every commit copies and writes
out (and the origin fsyncs). Layout 1 hashed every key (ns_hash + blake2b(key)); a
store written by it is upgraded when it opens (`KvStore.upgrade`).

`kv_expiry` (origin only) indexes records by expiration so the sweeper finds them
without a scan: u64(expiration) + ns_hash + blake2b(key)(16) -> record id. All functions
here take a transaction: callers decide atomicity.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from edge.v1 import kv_pb2
from edgepop.errors import InvalidArgumentError
from edgepop.limits import KEY_BYTES_MAX
from edgepop.storage import Storage

NS_HASH_BYTES = 8
KEY_HASH_BYTES = 16
# 8 (namespace hash) + 500 = 508 <= 511, LMDB's key limit.
KEY_HEAD_BYTES = 500
_TAIL_MARK = b"\x00"
# Record ids (see above): 8 + 1 + 502 = 8 + 1 + 486 + 16 = 511.
SHORT_KEY_BYTES_MAX = 502
LONG_KEY_HEAD_BYTES = 486
_SHORT_MARK = b"\x00"
_LONG_MARK = b"\x01"
# meta: the layout a store was written in (absent: layout 1, from before it was recorded).
LAYOUT_KEY = b"kv_layout"
LAYOUT = 2
# seq, expiration, key length, metadata length; then key, metadata, value.
_RECORD_HEADER = struct.Struct(">QqHH")
_U64 = struct.Struct(">Q")


@functools.lru_cache(maxsize=4096)
def namespace_hash(namespace: str) -> bytes:
    return hashlib.blake2b(namespace.encode(), digest_size=NS_HASH_BYTES).digest()


def record_id(ns_hash: bytes, key: bytes) -> bytes:
    if len(key) <= SHORT_KEY_BYTES_MAX:
        return ns_hash + _SHORT_MARK + key
    return ns_hash + _LONG_MARK + key[:LONG_KEY_HEAD_BYTES] + key_hash(key)


def _index_item(ns_hash: bytes, key: bytes) -> tuple[bytes, bytes]:
    """A key's entry in `kv_index` (dupsort): its head, and a marked tail for the rest."""
    return ns_hash + key[:KEY_HEAD_BYTES], _TAIL_MARK + key[KEY_HEAD_BYTES:]


def key_hash(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=KEY_HASH_BYTES).digest()


def _expiry_key(expiration: int, ns_hash: bytes, key: bytes) -> bytes:
    return encode_u64(expiration) + ns_hash + key_hash(key)


@dataclass(frozen=True, slots=True)
class Record:
    namespace: str
    key: str
    value: bytes
    metadata_json: str
    # Absolute unix seconds; 0 = never.
    expiration: int
    # The seq of the write that produced this value.
    seq: int

    def expired(self, now: float) -> bool:
        return self.expiration != 0 and self.expiration <= now

    def to_pb(self) -> kv_pb2.KvRecord:
        return kv_pb2.KvRecord(
            namespace=self.namespace,
            key=self.key,
            value=self.value,
            metadata_json=self.metadata_json,
            expiration=self.expiration,
            seq=self.seq,
        )

    @classmethod
    def from_pb(cls, record: kv_pb2.KvRecord) -> Record:
        return cls(
            record.namespace,
            record.key,
            record.value,
            record.metadata_json,
            record.expiration,
            record.seq,
        )


def encode_record(record: Record) -> bytes:
    return _encode_fields(
        record.seq, record.expiration, record.key.encode(), record.metadata_json, record.value
    )


def _encode_fields(
    seq: int, expiration: int, key: bytes, metadata_json: str, value: bytes
) -> bytes:
    metadata = metadata_json.encode()
    header = _RECORD_HEADER.pack(seq, expiration, len(key), len(metadata))
    return b"".join((header, key, metadata, value))


def decode_record(namespace: str, raw: bytes) -> Record:
    seq, expiration, key_len, metadata_len = _RECORD_HEADER.unpack_from(raw)
    start = _RECORD_HEADER.size
    key = raw[start : start + key_len].decode()
    start += key_len
    metadata = raw[start : start + metadata_len].decode()
    start += metadata_len
    return Record(namespace, key, raw[start:], metadata, expiration, seq)


def encode_u64(value: int) -> bytes:
    return _U64.pack(value)


def decode_u64(raw: bytes | None, default: int = 0) -> int:
    return default if raw is None else int(_U64.unpack(raw)[0])


def encode_cursor(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


def decode_cursor(cursor: str) -> bytes:
    """The key a cursor points after; anything this API did not make is refused."""
    try:
        key = base64.b64decode(cursor.encode(), altchars=b"-_", validate=True)
        key.decode("utf-8")
    except (ValueError, UnicodeError) as error:
        raise InvalidArgumentError("cursor is not one this API returned") from error
    if not key or len(key) > KEY_BYTES_MAX:
        raise InvalidArgumentError("cursor is not one this API returned")
    return key


class KvStore:
    """Typed access to the KV sub-databases of one LMDB environment."""

    def __init__(self, storage: Storage, *, track_expiry: bool) -> None:
        self.storage = storage
        self.index = storage.db("kv_index", dupsort=True)
        self.records = storage.db("kv_records")
        self.namespaces = storage.db("kv_namespaces")
        self.meta = storage.db("meta")
        self.expiry = storage.db("kv_expiry") if track_expiry else None
        # ns_hash -> name is a pure function of the name, so this cache is never stale.
        self._namespace_names: dict[bytes, str] = {}
        with storage.read() as txn:
            layout = self.get_u64(txn, LAYOUT_KEY, default=1)
        if layout != LAYOUT:
            storage.write_sync(self.upgrade)

    def upgrade(self, txn: Any) -> None:
        """Rewrite a layout-1 store in this layout (record ids and kv_expiry), in one
        transaction: a store opens whole in one layout or the other.

        A layout-1 id (ns_hash + 16-byte hash) may equal a layout-2 id of another key, so
        the records go through a scratch sub-database rather than being renamed in place.
        A store that already records a later layout is refused: this code cannot read it.
        """
        layout = self.get_u64(txn, LAYOUT_KEY, default=1)
        if layout > LAYOUT:
            raise RuntimeError(
                f"this KV store was written in layout {layout}; this edgepop reads up to "
                f"layout {LAYOUT}: upgrade edgepop"
            )
        if layout < LAYOUT:
            scratch = self.storage.db("kv_records_upgrade", txn=txn)
            cursor = txn.cursor(db=self.index)
            for index_key, tail in cursor.iternext(keys=True, values=True):
                ns_hash = index_key[:NS_HASH_BYTES]
                key = index_key[NS_HASH_BYTES:] + tail[1:]
                raw = txn.get(ns_hash + key_hash(key), db=self.records)
                if raw is None:
                    raise AssertionError("kv_index entry without a record")
                txn.put(record_id(ns_hash, key), raw, db=scratch)
            txn.drop(self.records, delete=False)
            if self.expiry is not None:
                txn.drop(self.expiry, delete=False)
            for rid, raw in txn.cursor(db=scratch).iternext(keys=True, values=True):
                txn.put(rid, raw, db=self.records)
                expiration = _RECORD_HEADER.unpack_from(raw)[1]
                if self.expiry is not None and expiration:
                    key = decode_record("", raw).key.encode()
                    txn.put(_expiry_key(expiration, rid[:NS_HASH_BYTES], key), rid, db=self.expiry)
            txn.drop(scratch, delete=True)
        self.put_u64(txn, LAYOUT_KEY, LAYOUT)

    # -- meta ------------------------------------------------------------------------

    def get_u64(self, txn: Any, name: bytes, default: int = 0) -> int:
        return decode_u64(txn.get(name, db=self.meta), default)

    def put_u64(self, txn: Any, name: bytes, value: int) -> None:
        txn.put(name, encode_u64(value), db=self.meta)

    # -- writes (inside a write transaction) -------------------------------------------

    def put(self, txn: Any, record: Record) -> None:
        self._put(
            txn,
            record.namespace,
            record.key,
            record.value,
            record.metadata_json,
            record.expiration,
            record.seq,
        )

    def _put(
        self,
        txn: Any,
        namespace: str,
        key_text: str,
        value: bytes,
        metadata_json: str,
        expiration: int,
        seq: int,
        namespace_recorded: bool = False,
    ) -> None:
        key = key_text.encode()
        ns_hash = namespace_hash(namespace)
        rid = record_id(ns_hash, key)
        if not namespace_recorded:
            # Not cached across transactions: an aborted one must not leave it unrecorded.
            txn.put(ns_hash, namespace.encode(), db=self.namespaces, overwrite=False)
        if self.expiry is not None:
            old = txn.get(rid, db=self.records)
            if old is not None:
                old_expiration = _RECORD_HEADER.unpack_from(old)[1]
                if old_expiration:
                    txn.delete(_expiry_key(old_expiration, ns_hash, key), db=self.expiry)
            if expiration:
                txn.put(_expiry_key(expiration, ns_hash, key), rid, db=self.expiry)
        index_key, index_tail = _index_item(ns_hash, key)
        txn.put(index_key, index_tail, db=self.index)
        txn.put(rid, _encode_fields(seq, expiration, key, metadata_json, value), db=self.records)

    def delete(self, txn: Any, namespace: str, key_text: str) -> bool:
        """Remove a key; False when it was not there."""
        key = key_text.encode()
        ns_hash = namespace_hash(namespace)
        rid = record_id(ns_hash, key)
        old = txn.get(rid, db=self.records)
        if old is None:
            return False
        if self.expiry is not None:
            old_expiration = _RECORD_HEADER.unpack_from(old)[1]
            if old_expiration:
                txn.delete(_expiry_key(old_expiration, ns_hash, key), db=self.expiry)
        txn.delete(*_index_item(ns_hash, key), db=self.index)
        txn.delete(rid, db=self.records)
        return True

    def apply(self, txn: Any, entry: kv_pb2.LogEntry, recorded: set[str] | None = None) -> None:
        """Apply one logged change (the same on the origin and every replica).

        `recorded`: namespaces already recorded in this transaction (updated), so that a
        caller applying many entries one by one records each namespace once.
        """
        self.apply_all(txn, (entry,), recorded)

    def apply_all(
        self, txn: Any, entries: Iterable[kv_pb2.LogEntry], recorded: set[str] | None = None
    ) -> None:
        """`apply` for each entry in order; a namespace is recorded once per transaction.

        Fields go from the entry to the encoded record without an intermediate Record.
        With expiry tracked (the origin) entry by entry, as a put reads the record it
        replaces; without (the replicas' hot path: every entry of every batch, on every
        PoP), a run of puts at once.
        """
        if recorded is None:
            recorded = set()
        if self.expiry is None:
            self._apply_untracked(txn, entries, recorded)
            return
        for entry in entries:
            namespace = entry.namespace
            if entry.op == kv_pb2.LOG_OP_PUT:
                self._put(
                    txn,
                    namespace,
                    entry.key,
                    entry.value,
                    entry.metadata_json,
                    entry.expiration,
                    entry.seq,
                    namespace in recorded,
                )
                recorded.add(namespace)
            elif entry.op == kv_pb2.LOG_OP_DELETE:
                self.delete(txn, namespace, entry.key)
            elif entry.op == kv_pb2.LOG_OP_SQL:
                continue  # SQL databases apply their own entries (edgepop.sqldb)
            else:
                raise ValueError(f"log entry {entry.seq} has no op")

    def _apply_untracked(
        self, txn: Any, entries: Iterable[kv_pb2.LogEntry], recorded: set[str]
    ) -> None:
        """`apply_all` for a store without expiry (a replica): the puts of a run go to LMDB
        in one `putmulti` per sub-database instead of two `put` calls per entry. Each call
        into py-lmdb parses its arguments and lets go of the GIL, which under load hands
        the loop thread to gRPC's poller; a run ends at a delete, which reads the record."""
        index_items: list[tuple[bytes, bytes]] = []
        record_items: list[tuple[bytes, bytes]] = []

        def flush() -> None:
            if record_items:
                txn.cursor(db=self.index).putmulti(index_items)
                txn.cursor(db=self.records).putmulti(record_items)
                index_items.clear()
                record_items.clear()

        for entry in entries:
            op = entry.op
            if op == kv_pb2.LOG_OP_PUT:
                namespace = entry.namespace
                key = entry.key.encode()
                ns_hash = namespace_hash(namespace)
                if namespace not in recorded:
                    txn.put(ns_hash, namespace.encode(), db=self.namespaces, overwrite=False)
                    recorded.add(namespace)
                index_items.append(_index_item(ns_hash, key))
                record_items.append(
                    (
                        record_id(ns_hash, key),
                        _encode_fields(
                            entry.seq, entry.expiration, key, entry.metadata_json, entry.value
                        ),
                    )
                )
            elif op == kv_pb2.LOG_OP_DELETE:
                flush()
                self.delete(txn, entry.namespace, entry.key)
            elif op == kv_pb2.LOG_OP_SQL:
                continue  # SQL databases apply their own entries (edgepop.sqldb)
            else:
                raise ValueError(f"log entry {entry.seq} has no op")
        flush()

    def clear(self, txn: Any) -> None:
        """Empty every KV sub-database (before installing a snapshot)."""
        for db in (self.index, self.records, self.namespaces):
            txn.drop(db, delete=False)
        if self.expiry is not None:
            txn.drop(self.expiry, delete=False)

    # -- reads -------------------------------------------------------------------------

    def get(self, txn: Any, namespace: str, key: bytes, now: float) -> Record | None:
        """The live record for a key: None when missing or expired."""
        raw = txn.get(record_id(namespace_hash(namespace), key), db=self.records)
        if raw is None:
            return None
        record = decode_record(namespace, raw)
        if record.expired(now):
            return None
        return record

    def get_fields(
        self, txn: Any, namespace: str, key: bytes, now: float
    ) -> tuple[bytes, str, int, int] | None:
        """(value, metadata, expiration, seq) of a live key: `get` without the Record (hot path)."""
        raw = txn.get(record_id(namespace_hash(namespace), key), db=self.records)
        if raw is None:
            return None
        seq, expiration, key_len, metadata_len = _RECORD_HEADER.unpack_from(raw)
        if expiration and expiration <= now:
            return None
        start = _RECORD_HEADER.size + key_len
        metadata = raw[start : start + metadata_len].decode() if metadata_len else ""
        return raw[start + metadata_len :], metadata, expiration, seq

    def list_range(
        self,
        txn: Any,
        namespace: str,
        prefix: bytes,
        start_after: bytes | None,
        limit: int,
        now: float,
    ) -> tuple[list[Record], bool]:
        """Up to `limit` live records with `prefix`, after `start_after`, in key order.

        The second value is True when more matching keys follow.
        """
        ns_hash = namespace_hash(namespace)
        start = prefix if start_after is None or start_after < prefix else start_after
        records: list[Record] = []
        cursor = txn.cursor(db=self.index)
        if not cursor.set_range(ns_hash + start[:KEY_HEAD_BYTES]):
            return records, False
        for index_key, tail in cursor.iternext(keys=True, values=True):
            if not index_key.startswith(ns_hash):
                break
            key = index_key[NS_HASH_BYTES:] + tail[1:]
            if start_after is not None and key <= start_after:
                continue
            if not key.startswith(prefix):
                if key > prefix:
                    break
                continue
            raw = txn.get(record_id(ns_hash, key), db=self.records)
            if raw is None:  # index and records change in one transaction
                raise AssertionError(f"kv_index entry without a record in {namespace!r}")
            record = decode_record(namespace, raw)
            if record.expired(now):
                continue
            if len(records) == limit:
                return records, True
            records.append(record)
        return records, False

    def namespace_name(self, txn: Any, ns_hash: bytes) -> str:
        name = self._namespace_names.get(ns_hash)
        if name is None:
            raw = txn.get(ns_hash, db=self.namespaces)
            if raw is None:
                raise AssertionError("record of an unknown namespace")
            name = raw.decode()
            self._namespace_names[ns_hash] = name
        return name

    def iter_records(self, txn: Any) -> Iterator[Record]:
        """Every stored record (expired ones included), in index order."""
        cursor = txn.cursor(db=self.index)
        for index_key, tail in cursor.iternext(keys=True, values=True):
            ns_hash = index_key[:NS_HASH_BYTES]
            key = index_key[NS_HASH_BYTES:] + tail[1:]
            raw = txn.get(record_id(ns_hash, key), db=self.records)
            if raw is None:
                raise AssertionError("kv_index entry without a record")
            yield decode_record(self.namespace_name(txn, ns_hash), raw)

    def expired_keys(self, txn: Any, now: float, limit: int) -> list[tuple[str, str]]:
        """Up to `limit` (namespace, key) pairs whose expiration has passed (origin only)."""
        if self.expiry is None:
            raise AssertionError("this store does not track expiry")
        found: list[tuple[str, str]] = []
        cursor = txn.cursor(db=self.expiry)
        if not cursor.first():
            return found
        for expiry_key, rid in cursor.iternext(keys=True, values=True):
            expiration = decode_u64(expiry_key[:8])
            if expiration > now or len(found) == limit:
                break
            raw = txn.get(rid, db=self.records)
            if raw is None:
                raise AssertionError("kv_expiry entry without a record")
            ns_hash = rid[:NS_HASH_BYTES]
            found.append((self.namespace_name(txn, ns_hash), decode_record("", raw).key))
        return found
