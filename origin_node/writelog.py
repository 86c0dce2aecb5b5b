"""The origin's write path: data and log change in one LMDB transaction per commit.

`WriteLog.commit` takes a batch of write requests (group commit) and, inside one write
transaction, gives each change the next gap-free seq, applies it to the store, appends
it to the log, remembers request ids (so a retried write answers its first seq), and
truncates the log past its retention bound. The caller commits with fsync before any
request in the batch is answered.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from edge.v1 import kv_pb2, sql_pb2
from edgepop import limits
from edgepop.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from edgepop.kvstore import KvStore, decode_u64, encode_u64

HEAD_SEQ_KEY = b"head_seq"
LOG_FIRST_SEQ_KEY = b"log_first_seq"
LOG_RETAIN_ENTRIES_DEFAULT = 100_000
# At most this many old entries are dropped per commit, so truncation never stalls writes.
TRUNCATE_ENTRIES_PER_COMMIT_MAX = 10_000


# Not frozen: a frozen dataclass sets each field through object.__setattr__, 1.7-3 us per
# Change against 0.3-0.6 us, paid for every entry of a KvPutMany. Nothing changes one.
@dataclass(slots=True)
class Change:
    op: kv_pb2.LogOp.ValueType
    key: str
    value: bytes = b""
    metadata_json: str = ""
    expiration: int = 0
    # Sweeper deletes: only if the key is still expired when the commit runs.
    only_if_expired: bool = False
    # Compare-and-set: only if the key's live version is this seq (0: absent).
    if_seq: int | None = None
    # LOG_OP_SQL: a SQL commit (or a new database) of the database named `key`, and the
    # id of the request it answers (a SQL group commit logs several in one request).
    sql: sql_pb2.SqlCommit | None = None
    request_id: str = ""


@dataclass
class WriteRequest:
    namespace: str
    changes: list[Change]
    request_id: str = ""
    # Filled by commit: the seq of the request's last change (0 if it changed nothing).
    seq: int = 0
    entries: list[kv_pb2.LogEntry] = field(default_factory=list)
    # Filled by commit when the request was refused (a compare-and-set that lost).
    error: Exception | None = None


class WriteLog:
    def __init__(self, store: KvStore, retain_entries: int = LOG_RETAIN_ENTRIES_DEFAULT) -> None:
        if retain_entries < 1:
            raise ValueError("the log must retain at least one entry")
        self.store = store
        self.retain_entries = retain_entries
        storage = store.storage
        self.log_db = storage.db("kv_log")
        self.requests_db = storage.db("kv_requests")
        self.requests_by_seq_db = storage.db("kv_requests_by_seq")
        # SQL database name -> SqlDatabase (with the seq of its last logged commit).
        self.sql_databases_db = storage.db("sql_databases")

    def positions(self, txn: Any) -> tuple[int, int]:
        """(head_seq, log_first_seq): the newest seq and the oldest one still logged."""
        head = self.store.get_u64(txn, HEAD_SEQ_KEY)
        first = self.store.get_u64(txn, LOG_FIRST_SEQ_KEY, default=1)
        return head, first

    def commit(self, txn: Any, batch: list[WriteRequest], now: float) -> tuple[int, int]:
        """Apply a batch inside `txn`; returns the new (head_seq, log_first_seq)."""
        head, first = self.positions(txn)
        recorded: set[str] = set()  # namespaces recorded in this transaction
        # The batch's log entries, put at once at the end (nothing here reads the log back).
        logged: list[tuple[bytes, bytes]] = []
        for request in batch:
            oversized = _oversized_request_id(request)
            if oversized is not None:
                request.error = oversized
                continue
            if request.request_id:
                seen = txn.get(request.request_id.encode(), db=self.requests_db)
                if seen is not None:
                    request.seq = decode_u64(seen)
                    continue
            refused = self._refused(txn, request, now)
            if refused is not None:
                request.error = refused
                continue
            for change in request.changes:
                if change.sql is not None:
                    head += 1
                    request.entries.append(self._log_sql(txn, head, now, change.sql))
                    if change.request_id:
                        self._remember(txn, change.request_id, head)
                    continue
                if change.only_if_expired:
                    record = self.store.get(txn, request.namespace, change.key.encode(), 0)
                    if record is None or not record.expired(now):
                        continue
                head += 1
                entry = kv_pb2.LogEntry(
                    seq=head,
                    commit_time=now,
                    namespace=request.namespace,
                    op=change.op,
                    key=change.key,
                    value=change.value,
                    metadata_json=change.metadata_json,
                    expiration=change.expiration,
                )
                self.store.apply(txn, entry, recorded)
                logged.append((encode_u64(head), entry.SerializeToString()))
                request.entries.append(entry)
            request.seq = head if request.entries else 0
            if request.request_id and request.entries:
                self._remember(txn, request.request_id, head)
        if logged:
            txn.cursor(db=self.log_db).putmulti(logged)
        first = self._truncate(txn, head, first)
        self.store.put_u64(txn, HEAD_SEQ_KEY, head)
        self.store.put_u64(txn, LOG_FIRST_SEQ_KEY, first)
        return head, first

    def _refused(self, txn: Any, request: WriteRequest, now: float) -> Exception | None:
        """Why a request's compare-and-set fails (None when every change may go ahead).

        Checked for all of a request's changes before any applies: it commits whole or
        not at all, and other requests of the batch are not affected.
        """
        for change in request.changes:
            if change.sql is not None:
                found = self.sql_database(txn, change.sql.database)
                if change.sql.HasField("created") and found is not None:
                    return AlreadyExistsError(f"database {change.sql.database!r} already exists")
                if not change.sql.HasField("created") and found is None:
                    return NotFoundError(f"no database {change.sql.database!r}")
                continue
            if change.if_seq is None:
                continue
            record = self.store.get(txn, request.namespace, change.key.encode(), now)
            current = record.seq if record is not None else 0
            if current != change.if_seq:
                where = f"at seq {current}" if current else "absent"
                return FailedPreconditionError(
                    f"key {change.key!r} is {where}, not at if_seq {change.if_seq}: not written"
                )
        return None

    def _remember(self, txn: Any, request_id: str, seq: int) -> None:
        """A retry of `request_id` answers `seq` (until the log is truncated past it)."""
        txn.put(request_id.encode(), encode_u64(seq), db=self.requests_db)
        txn.put(encode_u64(seq), request_id.encode(), db=self.requests_by_seq_db)

    def request_seq(self, txn: Any, request_id: str) -> int | None:
        """The seq a request id was committed at, if the log remembers it."""
        seen = txn.get(request_id.encode(), db=self.requests_db) if request_id else None
        return decode_u64(seen) if seen is not None else None

    def _log_sql(
        self, txn: Any, seq: int, now: float, commit: sql_pb2.SqlCommit
    ) -> kv_pb2.LogEntry:
        """Log a SQL commit and record it in the catalog (the SQLite file follows it)."""
        if commit.HasField("created"):
            database = sql_pb2.SqlDatabase()
            database.CopyFrom(commit.created)
            database.created_seq = seq
            database.created_at = now
            commit.created.CopyFrom(database)
        else:
            found = self.sql_database(txn, commit.database)
            if found is None:  # checked by _refused in this transaction
                raise AssertionError(f"no database {commit.database!r}")
            database = found
        database.last_seq = seq
        txn.put(commit.database.encode(), database.SerializeToString(), db=self.sql_databases_db)
        entry = kv_pb2.LogEntry(seq=seq, commit_time=now, op=kv_pb2.LOG_OP_SQL, sql=commit)
        txn.put(encode_u64(seq), entry.SerializeToString(), db=self.log_db)
        return entry

    def sql_database(self, txn: Any, name: str) -> sql_pb2.SqlDatabase | None:
        raw = txn.get(name.encode(), db=self.sql_databases_db)
        return sql_pb2.SqlDatabase.FromString(raw) if raw is not None else None

    def sql_databases(self, txn: Any) -> list[sql_pb2.SqlDatabase]:
        cursor = txn.cursor(db=self.sql_databases_db)
        return [sql_pb2.SqlDatabase.FromString(raw) for raw in cursor.iternext(keys=False)]

    def _truncate(self, txn: Any, head: int, first: int) -> int:
        """Drop the oldest entries beyond the retention bound (and their request ids)."""
        keep_from = max(first, head - self.retain_entries + 1)
        stop = min(keep_from, first + TRUNCATE_ENTRIES_PER_COMMIT_MAX)
        if stop <= first:
            return first
        # By cursor, in key order (big-endian seqs): one step per dropped entry, and only
        # the seqs that carry a request id (few: a KvPutMany's hundreds share one) cost
        # a lookup in the request tables.
        first_key, stop_key = encode_u64(first), encode_u64(stop)
        entries = txn.cursor(db=self.log_db)
        if entries.set_range(first_key):
            # `delete` steps to the next entry; past the last one the key reads b"".
            while first_key <= entries.key() < stop_key:
                entries.delete()
        request_ids = txn.cursor(db=self.requests_by_seq_db)
        if request_ids.set_range(first_key):
            while first_key <= request_ids.key() < stop_key:
                txn.delete(request_ids.value(), db=self.requests_db)
                request_ids.delete()
        return stop

    def read(
        self, txn: Any, from_seq: int, entries_max: int, bytes_max: int
    ) -> list[kv_pb2.LogEntry]:
        """Consecutive entries from `from_seq`, bounded by count and bytes (at least one)."""
        return [
            kv_pb2.LogEntry.FromString(raw)
            for raw in self.read_raw(txn, from_seq, entries_max, bytes_max)
        ]

    def read_raw(self, txn: Any, from_seq: int, entries_max: int, bytes_max: int) -> list[bytes]:
        """The same as `read`, as the stored (serialized) entries."""
        entries: list[bytes] = []
        size = 0
        for raw in self._raw_from(txn, from_seq):
            if entries and (len(entries) >= entries_max or size + len(raw) > bytes_max):
                break
            entries.append(raw)
            size += len(raw)
        return entries

    def _raw_from(self, txn: Any, from_seq: int) -> Iterator[bytes]:
        cursor = txn.cursor(db=self.log_db)
        if not cursor.set_key(encode_u64(from_seq)):
            return
        expected = from_seq
        for key, raw in cursor.iternext(keys=True, values=True):
            if decode_u64(key) != expected:  # the log is gap-free by construction
                raise AssertionError(f"log gap: expected seq {expected}, found {decode_u64(key)}")
            yield raw
            expected += 1


def _oversized_request_id(request: WriteRequest) -> InvalidArgumentError | None:
    """A request id longer than the limit, refused for its request alone.

    Ids are checked where requests enter; this is the last line. Past LMDB's key size, an
    id would fail the put and with it the whole batch's transaction: every other client's
    write in the group (a fuzzed SQL write once took a KvPutMany down with it).
    """
    # Only a SQL group's changes carry ids of their own: a KvPutMany's thousands do not.
    ids = [change.request_id for change in request.changes if change.request_id]
    for request_id in (request.request_id, *ids):
        try:
            limits.check_request_id(request_id)
        except InvalidArgumentError as error:
            return error
    return None
