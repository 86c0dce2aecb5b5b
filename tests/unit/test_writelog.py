"""The origin's write log on real LMDB: gap-free seqs, dedup, sweeper deletes, truncation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.v1 import kv_pb2
from edgepop import limits
from edgepop.errors import InvalidArgumentError
from edgepop.kvstore import KvStore
from edgepop.storage import Storage
from origin_node.writelog import Change, WriteLog, WriteRequest

NOW = 1_700_000_000.0
PUT = kv_pb2.LOG_OP_PUT
DELETE = kv_pb2.LOG_OP_DELETE


def _put(key: str, value: bytes = b"v", expiration: int = 0) -> Change:
    return Change(PUT, key, value, "", expiration)


def _commit(log: WriteLog, *batch: WriteRequest, now: float = NOW) -> tuple[int, int]:
    return log.store.storage.write_sync(lambda txn: log.commit(txn, list(batch), now))


def _positions(log: WriteLog) -> tuple[int, int]:
    with log.store.storage.read() as txn:
        return log.positions(txn)


def _read(log: WriteLog, from_seq: int, entries_max: int = 1000, bytes_max: int = 1 << 30):
    with log.store.storage.read() as txn:
        return log.read(txn, from_seq, entries_max, bytes_max)


@pytest.fixture
def log(origin_store: KvStore) -> WriteLog:
    return WriteLog(origin_store)


def test_empty_log_has_head_zero_and_first_one(log: WriteLog) -> None:
    assert _positions(log) == (0, 1)
    assert _read(log, 1) == []


def test_first_write_gets_seq_1_and_is_in_the_store(log: WriteLog) -> None:
    request = WriteRequest("app", [_put("k", b"hello")])
    assert _commit(log, request) == (1, 1)
    assert request.seq == 1
    assert [entry.seq for entry in request.entries] == [1]
    with log.store.storage.read() as txn:
        record = log.store.get(txn, "app", b"k", NOW)
    assert record is not None and (record.value, record.seq) == (b"hello", 1)


def test_seqs_are_gap_free_across_requests_and_commits(log: WriteLog) -> None:
    first = [WriteRequest("app", [_put(f"a{i}")]) for i in range(3)]
    _commit(log, *first)
    second = [WriteRequest("app", [_put(f"b{i}")]) for i in range(4)]
    _commit(log, *second)
    assert [request.seq for request in first + second] == list(range(1, 8))
    entries = _read(log, 1)
    assert [entry.seq for entry in entries] == list(range(1, 8))
    assert [entry.key for entry in entries] == ["a0", "a1", "a2", "b0", "b1", "b2", "b3"]
    assert all(entry.commit_time == NOW for entry in entries)
    assert _positions(log) == (7, 1)


def test_put_many_of_n_changes_gets_n_consecutive_seqs_and_the_last(log: WriteLog) -> None:
    _commit(log, WriteRequest("app", [_put("before")]))
    request = WriteRequest("app", [_put(f"k{i}", bytes([i])) for i in range(50)])
    head, _ = _commit(log, request)
    assert head == 51
    assert [entry.seq for entry in request.entries] == list(range(2, 52))
    assert request.seq == 51
    assert [entry.key for entry in request.entries] == [f"k{i}" for i in range(50)]


def test_log_entries_carry_the_change(log: WriteLog) -> None:
    request = WriteRequest(
        "app",
        [Change(PUT, "k", b"v", '{"m":1}', 1_800_000_000), Change(DELETE, "k")],
    )
    _commit(log, request)
    put, delete = _read(log, 1)
    assert (put.namespace, put.op, put.key, put.value, put.metadata_json, put.expiration) == (
        "app",
        PUT,
        "k",
        b"v",
        '{"m":1}',
        1_800_000_000,
    )
    assert (delete.op, delete.key, delete.seq) == (DELETE, "k", 2)
    with log.store.storage.read() as txn:
        assert log.store.get(txn, "app", b"k", NOW) is None


def test_retried_request_id_answers_the_first_seq_and_appends_nothing(log: WriteLog) -> None:
    original = WriteRequest("app", [_put("k", b"first")], request_id="req-1")
    _commit(log, original)
    _commit(log, WriteRequest("app", [_put("other")]))
    retry = WriteRequest("app", [_put("k", b"second")], request_id="req-1")
    head, _ = _commit(log, retry)
    assert retry.seq == original.seq == 1
    assert retry.entries == []
    assert head == 2
    assert [entry.seq for entry in _read(log, 1)] == [1, 2]
    with log.store.storage.read() as txn:
        record = log.store.get(txn, "app", b"k", NOW)
    assert record is not None and record.value == b"first"


def test_duplicate_request_id_within_one_batch_is_applied_once(log: WriteLog) -> None:
    a = WriteRequest("app", [_put("x"), _put("y")], request_id="dup")
    b = WriteRequest("app", [_put("x"), _put("y")], request_id="dup")
    head, _ = _commit(log, a, b)
    assert head == 2
    assert a.seq == b.seq == 2
    assert b.entries == []


def test_distinct_request_ids_are_not_confused(log: WriteLog) -> None:
    a = WriteRequest("app", [_put("x")], request_id="a")
    b = WriteRequest("app", [_put("x")], request_id="b")
    _commit(log, a, b)
    assert (a.seq, b.seq) == (1, 2)


def test_sweeper_delete_skips_a_key_that_is_no_longer_expired(log: WriteLog) -> None:
    _commit(
        log,
        WriteRequest(
            "app",
            [
                _put("expired", expiration=int(NOW) - 5),
                _put("renewed", expiration=int(NOW) - 5),
                _put("live", expiration=int(NOW) + 100),
            ],
        ),
    )
    # A client renews one key before the sweeper's delete commits.
    _commit(log, WriteRequest("app", [_put("renewed")]))
    sweep = WriteRequest(
        "app",
        [
            Change(DELETE, key, only_if_expired=True)
            for key in ("expired", "renewed", "live", "missing")
        ],
    )
    head, _ = _commit(log, sweep)
    assert head == 5
    assert [(entry.seq, entry.key, entry.op) for entry in sweep.entries] == [(5, "expired", DELETE)]
    assert sweep.seq == 5
    with log.store.storage.read() as txn:
        assert log.store.get(txn, "app", b"renewed", NOW) is not None
        assert log.store.get(txn, "app", b"live", NOW) is not None
        assert log.store.expired_keys(txn, NOW, 10) == []


def test_sweep_that_changes_nothing_gets_seq_0_and_does_not_advance_head(log: WriteLog) -> None:
    _commit(log, WriteRequest("app", [_put("live")]))
    sweep = WriteRequest("app", [Change(DELETE, "live", only_if_expired=True)])
    assert _commit(log, sweep) == (1, 1)
    assert sweep.seq == 0
    assert sweep.entries == []


def test_truncation_keeps_at_most_retain_entries(origin_store: KvStore) -> None:
    log = WriteLog(origin_store, retain_entries=3)
    for i in range(10):
        head, first = _commit(log, WriteRequest("app", [_put(f"k{i}")]))
        assert head == i + 1
        assert head - first + 1 == min(head, 3)
        assert _positions(log) == (head, first)
    assert _positions(log) == (10, 8)
    assert [entry.seq for entry in _read(log, 8)] == [8, 9, 10]
    assert _read(log, 7) == []
    assert _read(log, 1) == []


def test_truncation_of_a_big_request_keeps_the_newest_entries(origin_store: KvStore) -> None:
    log = WriteLog(origin_store, retain_entries=5)
    head, first = _commit(log, WriteRequest("app", [_put(f"k{i}") for i in range(12)]))
    assert (head, first) == (12, 8)
    assert [entry.key for entry in _read(log, first)] == [f"k{i}" for i in range(7, 12)]
    # The data itself is not truncated: every key is still stored.
    with origin_store.storage.read() as txn:
        records, _ = origin_store.list_range(txn, "app", b"", None, 100, NOW)
    assert len(records) == 12


def test_request_id_is_forgotten_once_its_entry_is_truncated(origin_store: KvStore) -> None:
    log = WriteLog(origin_store, retain_entries=2)
    _commit(log, WriteRequest("app", [_put("k", b"one")], request_id="old"))
    _commit(log, WriteRequest("app", [_put("a")], request_id="kept"))
    _commit(log, WriteRequest("app", [_put("b")]))
    assert _positions(log) == (3, 2)
    # "kept" is still in the retained log: a retry is deduplicated.
    retry_kept = WriteRequest("app", [_put("a")], request_id="kept")
    _commit(log, retry_kept)
    assert retry_kept.seq == 2 and retry_kept.entries == []
    # "old" fell out of the log, and so did its dedup record.
    retry_old = WriteRequest("app", [_put("k", b"two")], request_id="old")
    _commit(log, retry_old)
    assert retry_old.seq == 4


def test_truncation_drops_the_last_remembered_request_id(origin_store: KvStore) -> None:
    # The dropped entry carries the newest request id there is: the truncating cursor
    # steps past the end of the request table, and must stop there.
    log = WriteLog(origin_store, retain_entries=1)
    _commit(log, WriteRequest("app", [_put("a")], request_id="first"))
    _commit(log, WriteRequest("app", [_put("b")]))
    assert _positions(log) == (2, 2)
    with origin_store.storage.read() as txn:
        assert log.request_seq(txn, "first") is None
        assert list(txn.cursor(db=log.requests_by_seq_db).iternext()) == []
    retry = WriteRequest("app", [_put("a")], request_id="first")
    _commit(log, retry)
    assert retry.seq == 3


def test_retain_entries_must_be_positive(origin_store: KvStore) -> None:
    with pytest.raises(ValueError, match="at least one"):
        WriteLog(origin_store, retain_entries=0)


def test_read_is_bounded_by_count(log: WriteLog) -> None:
    _commit(log, WriteRequest("app", [_put(f"k{i}") for i in range(10)]))
    assert [entry.seq for entry in _read(log, 3, entries_max=4)] == [3, 4, 5, 6]


def test_read_is_bounded_by_bytes_but_returns_at_least_one_entry(log: WriteLog) -> None:
    _commit(log, WriteRequest("app", [_put(f"k{i}", bytes(1000)) for i in range(10)]))
    one = _read(log, 1, bytes_max=10)
    assert [entry.seq for entry in one] == [1]
    entry_size = len(one[0].SerializeToString())
    three = _read(log, 2, bytes_max=3 * entry_size + entry_size // 2)
    assert [entry.seq for entry in three] == [2, 3, 4]


def test_read_from_beyond_the_head_is_empty(log: WriteLog) -> None:
    _commit(log, WriteRequest("app", [_put("k")]))
    assert _read(log, 2) == []


@settings(max_examples=30, deadline=None)
@given(
    batches=st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=4), min_size=1, max_size=6),
    retain=st.integers(1, 8),
    entries_max=st.integers(1, 5),
)
def test_log_stays_gap_free_and_bounded_for_any_batches(
    tmp_path_factory: pytest.TempPathFactory,
    batches: list[list[int]],
    retain: int,
    entries_max: int,
) -> None:
    storage = Storage(tmp_path_factory.mktemp("wlprop") / "lmdb", 64 * 1024**2)
    try:
        log = WriteLog(KvStore(storage, track_expiry=True), retain_entries=retain)
        expected_head = 0
        for batch in batches:
            requests = [WriteRequest("app", [_put(f"k{n}") for n in range(size)]) for size in batch]
            head, first = _commit(log, *requests)
            for request, size in zip(requests, batch, strict=True):
                assert [e.seq for e in request.entries] == list(
                    range(expected_head + 1, expected_head + size + 1)
                )
                expected_head += size
                assert request.seq == (expected_head if size else 0)
            assert head == expected_head
            assert first == max(1, head - retain + 1)
        # Reading in pages from the first retained seq walks the log without gaps.
        seqs: list[int] = []
        next_seq = first
        while entries := _read(log, next_seq, entries_max=entries_max):
            assert 1 <= len(entries) <= entries_max
            seqs.extend(entry.seq for entry in entries)
            next_seq = entries[-1].seq + 1
        assert seqs == list(range(first, head + 1))
    finally:
        storage.close()


def _cas(key: str, if_seq: int, value: bytes) -> Change:
    return Change(PUT, key, value, "", 0, if_seq=if_seq)


def test_a_compare_and_set_writes_only_at_the_version_it_read(log: WriteLog) -> None:
    created = WriteRequest("app", [_cas("k", 0, b"one")])  # 0: only if absent
    _commit(log, created)
    assert created.error is None and created.seq == 1
    again = WriteRequest("app", [_cas("k", 0, b"again")])
    _commit(log, again)
    assert again.error is not None and "is at seq 1, not at if_seq 0" in str(again.error)
    assert again.seq == 0 and again.entries == []
    updated = WriteRequest("app", [_cas("k", 1, b"two")])
    stale = WriteRequest("app", [_cas("k", 1, b"lost")])
    other = WriteRequest("app", [_put("other")])
    # One batch: the first CAS wins, the second sees its seq and loses, alone.
    _commit(log, updated, stale, other)
    assert (updated.error, updated.seq) == (None, 2)
    assert stale.error is not None and stale.seq == 0
    assert (other.error, other.seq) == (None, 3)
    with log.store.storage.read() as txn:
        record = log.store.get(txn, "app", b"k", NOW)
    assert record is not None and (record.value, record.seq) == (b"two", 2)
    assert [entry.key for entry in _read(log, 1)] == ["k", "k", "other"]


def test_a_compare_and_set_on_an_expired_key_sees_it_absent(log: WriteLog) -> None:
    _commit(log, WriteRequest("app", [_put("k", expiration=int(NOW) - 1)]), now=NOW - 10)
    revived = WriteRequest("app", [_cas("k", 0, b"new")])
    _commit(log, revived)
    assert revived.error is None and revived.seq == 2


def test_a_request_id_past_the_limit_is_refused_alone_and_the_batch_commits(
    log: WriteLog,
) -> None:
    # Ids are checked where requests enter; the log is the last line. Past LMDB's key
    # size, one id would fail the put and every other request of the batch with it.
    too_long = "r" * (limits.REQUEST_ID_BYTES_MAX + 1)
    before = WriteRequest("app", [_put("a")])
    on_request = WriteRequest("app", [_put("b")], request_id=too_long)
    on_change = WriteRequest("app", [Change(PUT, "c", b"v", request_id=too_long)])
    after = WriteRequest("app", [_put("d")], request_id="fine")
    head, _ = _commit(log, before, on_request, on_change, after)
    assert head == 2
    assert (before.seq, after.seq) == (1, 2)
    for refused in (on_request, on_change):
        assert isinstance(refused.error, InvalidArgumentError)
        assert refused.entries == []
    assert [entry.key for entry in _read(log, 1)] == ["a", "d"]
