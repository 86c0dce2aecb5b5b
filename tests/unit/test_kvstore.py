"""The LMDB KV layout with a real Storage: reads, writes, expiry, and byte-wise list order.

Keys longer than 500 bytes are split into a 500-byte head (the LMDB key) and a tail (a
duplicate value); listing must still give full byte-wise lexicographic order, as Workers
KV promises.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.v1 import kv_pb2
from edgepop.kvstore import (
    KEY_HEAD_BYTES,
    LAYOUT,
    LAYOUT_KEY,
    SHORT_KEY_BYTES_MAX,
    KvStore,
    Record,
    decode_record,
    encode_record,
    encode_u64,
    key_hash,
    namespace_hash,
    record_id,
)
from edgepop.storage import Storage

NOW = 1_700_000_000.0
FUTURE = int(NOW) + 3600
PAST = int(NOW) - 1

# A 500-byte head shared by long keys, and heads that end inside a multibyte character.
HEAD = "h" * KEY_HEAD_BYTES


def _put(store: KvStore, *records: Record) -> None:
    def work(txn: object) -> None:
        for record in records:
            store.put(txn, record)

    store.storage.write_sync(work)


def _rec(key: str, value: bytes = b"v", *, ns: str = "app", exp: int = 0, seq: int = 1) -> Record:
    return Record(ns, key, value, "", exp, seq)


def _get(store: KvStore, key: str, *, ns: str = "app", now: float = NOW) -> Record | None:
    with store.storage.read() as txn:
        return store.get(txn, ns, key.encode(), now)


def _page(
    store: KvStore,
    prefix: str = "",
    start_after: bytes | None = None,
    limit: int = 1000,
    *,
    ns: str = "app",
    now: float = NOW,
) -> tuple[list[str], bool]:
    with store.storage.read() as txn:
        records, more = store.list_range(txn, ns, prefix.encode(), start_after, limit, now)
    return [record.key for record in records], more


def _list_all(
    store: KvStore, prefix: str, limit: int, *, ns: str = "app", now: float = NOW
) -> list[tuple[list[str], bool]]:
    """Every page of a paginated listing, continuing after each page's last key."""
    pages = []
    start_after: bytes | None = None
    while True:
        keys, more = _page(store, prefix, start_after, limit, ns=ns, now=now)
        pages.append((keys, more))
        if not more:
            return pages
        assert keys, "a page that says more follows must not be empty"
        start_after = keys[-1].encode()
        assert len(pages) < 10_000


def _bytes_order(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda key: key.encode("utf-8"))


# -- put / get / delete ----------------------------------------------------------------------


def test_put_then_get_returns_the_record(origin_store: KvStore) -> None:
    _put(origin_store, Record("app", "user/1", b"alice", '{"role":"admin"}', FUTURE, 5))
    assert _get(origin_store, "user/1") == Record(
        "app", "user/1", b"alice", '{"role":"admin"}', FUTURE, 5
    )


def test_get_of_a_missing_key_is_none(origin_store: KvStore) -> None:
    assert _get(origin_store, "nothing") is None


def test_put_overwrites_and_the_key_is_listed_once(origin_store: KvStore) -> None:
    _put(origin_store, _rec("k", b"old", seq=1))
    _put(origin_store, _rec("k", b"new", seq=2))
    record = _get(origin_store, "k")
    assert record is not None and (record.value, record.seq) == (b"new", 2)
    assert _page(origin_store) == (["k"], False)


def test_put_overwrites_a_long_key_and_it_is_listed_once(origin_store: KvStore) -> None:
    key = HEAD + "tail"
    _put(origin_store, _rec(key, b"old"))
    _put(origin_store, _rec(key, b"new", seq=2))
    assert _page(origin_store) == ([key], False)
    record = _get(origin_store, key)
    assert record is not None and record.value == b"new"


def test_namespaces_are_isolated(origin_store: KvStore) -> None:
    _put(origin_store, _rec("k", b"in-a", ns="a"), _rec("k", b"in-b", ns="b"))
    a, b = _get(origin_store, "k", ns="a"), _get(origin_store, "k", ns="b")
    assert a is not None and a.value == b"in-a"
    assert b is not None and b.value == b"in-b"
    assert _get(origin_store, "k", ns="c") is None
    assert _page(origin_store, ns="a") == (["k"], False)
    assert _page(origin_store, ns="c") == ([], False)


def test_delete_removes_the_key_and_reports_whether_it_was_there(origin_store: KvStore) -> None:
    _put(origin_store, _rec("gone"), _rec("kept"), _rec(HEAD + "long"))
    assert origin_store.storage.write_sync(lambda txn: origin_store.delete(txn, "app", "gone"))
    assert origin_store.storage.write_sync(
        lambda txn: origin_store.delete(txn, "app", HEAD + "long")
    )
    assert not origin_store.storage.write_sync(lambda txn: origin_store.delete(txn, "app", "gone"))
    assert _get(origin_store, "gone") is None
    assert _get(origin_store, HEAD + "long") is None
    assert _page(origin_store) == (["kept"], False)


def test_value_of_25_mib_round_trips(origin_store: KvStore) -> None:
    value = bytes(range(256)) * (25 * 1024 * 4)
    assert len(value) == 25 * 1024 * 1024
    _put(origin_store, _rec("big", value))
    record = _get(origin_store, "big")
    assert record is not None and record.value == value


def test_apply_puts_and_deletes_from_log_entries(replica_store: KvStore) -> None:
    put = kv_pb2.LogEntry(
        seq=3, namespace="app", op=kv_pb2.LOG_OP_PUT, key="k", value=b"v", expiration=FUTURE
    )
    replica_store.storage.write_sync(lambda txn: replica_store.apply(txn, put))
    assert _get(replica_store, "k") == Record("app", "k", b"v", "", FUTURE, 3)
    delete = kv_pb2.LogEntry(seq=4, namespace="app", op=kv_pb2.LOG_OP_DELETE, key="k")
    replica_store.storage.write_sync(lambda txn: replica_store.apply(txn, delete))
    assert _get(replica_store, "k") is None


def test_apply_refuses_a_log_entry_without_an_op(replica_store: KvStore) -> None:
    entry = kv_pb2.LogEntry(seq=9, namespace="app", key="k")
    with pytest.raises(ValueError, match="9"):
        replica_store.storage.write_sync(lambda txn: replica_store.apply(txn, entry))
    assert _get(replica_store, "k") is None


# -- expiry ----------------------------------------------------------------------------------


def test_expired_record_is_hidden_from_get(origin_store: KvStore) -> None:
    _put(origin_store, _rec("k", exp=FUTURE))
    assert _get(origin_store, "k", now=FUTURE - 1) is not None
    assert _get(origin_store, "k", now=FUTURE) is None
    assert _get(origin_store, "k", now=FUTURE + 1) is None


def test_expired_records_are_skipped_by_list(origin_store: KvStore) -> None:
    _put(
        origin_store,
        _rec("a"),
        _rec("b", exp=PAST),
        _rec("c"),
        _rec("d", exp=PAST),
        _rec(HEAD + "e", exp=PAST),
    )
    assert _page(origin_store) == (["a", "c"], False)
    # Expired keys do not count towards the limit, and do not make `more` true.
    assert _page(origin_store, limit=1) == (["a"], True)
    assert _page(origin_store, start_after=b"a", limit=1) == (["c"], False)


def test_expired_keys_lists_due_keys_in_expiration_order(origin_store: KvStore) -> None:
    _put(
        origin_store,
        _rec("late", ns="a", exp=int(NOW) - 10),
        _rec("early", ns="b", exp=int(NOW) - 100),
        _rec("now", ns="a", exp=int(NOW)),
        _rec("future", ns="a", exp=FUTURE),
        _rec("never", ns="a"),
        _rec(HEAD + "long", ns="a", exp=int(NOW) - 50),
    )
    with origin_store.storage.read() as txn:
        assert origin_store.expired_keys(txn, NOW, 100) == [
            ("b", "early"),
            ("a", HEAD + "long"),
            ("a", "late"),
            ("a", "now"),
        ]
        assert origin_store.expired_keys(txn, NOW, 2) == [("b", "early"), ("a", HEAD + "long")]
        assert origin_store.expired_keys(txn, int(NOW) - 101, 100) == []


def test_expired_keys_forgets_keys_overwritten_or_deleted(origin_store: KvStore) -> None:
    _put(
        origin_store, _rec("renewed", exp=PAST), _rec("deleted", exp=PAST), _rec("moved", exp=PAST)
    )
    _put(origin_store, _rec("renewed"), _rec("moved", exp=FUTURE))
    origin_store.storage.write_sync(lambda txn: origin_store.delete(txn, "app", "deleted"))
    with origin_store.storage.read() as txn:
        assert origin_store.expired_keys(txn, NOW, 100) == []
        assert origin_store.expired_keys(txn, FUTURE, 100) == [("app", "moved")]


def test_expired_keys_is_refused_by_a_store_without_expiry_index(
    replica_store: KvStore,
) -> None:
    with replica_store.storage.read() as txn, pytest.raises(AssertionError):
        replica_store.expired_keys(txn, NOW, 10)


# -- list ------------------------------------------------------------------------------------


def test_list_returns_keys_in_utf8_byte_order(origin_store: KvStore) -> None:
    keys = ["b", "a", "ab", "é", "z", "日本", "😀", "A", "a\x00", "/"]
    _put(origin_store, *(_rec(key) for key in keys))
    listed, more = _page(origin_store)
    assert listed == _bytes_order(keys)
    assert listed[:5] == ["/", "A", "a", "a\x00", "ab"]
    assert not more


def test_list_orders_keys_that_share_a_500_byte_head(origin_store: KvStore) -> None:
    keys = [
        HEAD + "b",
        HEAD,
        HEAD + "a",
        HEAD + "ab",
        HEAD + "\x00",
        HEAD + "a\x00",
        HEAD + "é",
        HEAD + "😀",
        HEAD + "z" * 12,
        HEAD[:-1],
        HEAD[:-1] + "z",
        HEAD[:-1] + "a" + "b",
        "h" * 498 + "日",  # 501 bytes: the head ends inside the character
        "h" * 498 + "é" + "x",  # 501 bytes: head ends exactly after the character
        "i",
        "h",
    ]
    _put(origin_store, *(_rec(key) for key in keys))
    listed, more = _page(origin_store)
    assert listed == _bytes_order(keys)
    assert listed.index(HEAD) < listed.index(HEAD + "\x00") < listed.index(HEAD + "a")
    assert listed.index(HEAD + "a") < listed.index(HEAD + "a\x00") < listed.index(HEAD + "ab")
    assert listed.index(HEAD[:-1] + "ab") < listed.index(HEAD)
    assert not more


def test_list_pages_through_keys_that_share_a_500_byte_head(origin_store: KvStore) -> None:
    keys = [HEAD + tail for tail in ("", "a", "b", "ba", "c", "é")] + [HEAD[:-1], "a", "z"]
    _put(origin_store, *(_rec(key) for key in keys))
    pages = _list_all(origin_store, "", 2)
    assert [keys for keys, _ in pages] == [
        ["a", HEAD[:-1]],
        [HEAD, HEAD + "a"],
        [HEAD + "b", HEAD + "ba"],
        [HEAD + "c", HEAD + "é"],
        ["z"],
    ]
    assert [more for _, more in pages] == [True, True, True, True, False]


def test_list_by_a_prefix_longer_than_the_head(origin_store: KvStore) -> None:
    keys = [HEAD + tail for tail in ("", "a", "ab", "abc", "ac", "b")] + ["a"]
    _put(origin_store, *(_rec(key) for key in keys))
    assert _page(origin_store, HEAD + "ab") == ([HEAD + "ab", HEAD + "abc"], False)
    assert _page(origin_store, HEAD + "a") == (
        [HEAD + "a", HEAD + "ab", HEAD + "abc", HEAD + "ac"],
        False,
    )
    assert _page(origin_store, HEAD) == (_bytes_order(keys[:-1]), False)
    assert _page(origin_store, HEAD + "a", start_after=(HEAD + "ab").encode()) == (
        [HEAD + "abc", HEAD + "ac"],
        False,
    )


def test_list_by_prefix_returns_only_matching_keys(origin_store: KvStore) -> None:
    keys = ["user/1", "user/2", "user/10", "users", "user", "use", "admin/1", "zeta"]
    _put(origin_store, *(_rec(key) for key in keys))
    assert _page(origin_store, "user/") == (["user/1", "user/10", "user/2"], False)
    assert _page(origin_store, "user") == (["user", "user/1", "user/10", "user/2", "users"], False)
    assert _page(origin_store, "nope") == ([], False)


def test_list_limit_caps_the_page_and_says_more_follow(origin_store: KvStore) -> None:
    _put(origin_store, *(_rec(f"k{i}") for i in range(5)))
    assert _page(origin_store, limit=3) == (["k0", "k1", "k2"], True)
    assert _page(origin_store, limit=5) == (["k0", "k1", "k2", "k3", "k4"], False)


def test_list_start_after_continues_strictly_after_the_key(origin_store: KvStore) -> None:
    _put(origin_store, *(_rec(key) for key in ["a", "b", "c", "d"]))
    assert _page(origin_store, start_after=b"b") == (["c", "d"], False)
    # A start_after that is not a stored key continues from where it would sort.
    assert _page(origin_store, start_after=b"bb") == (["c", "d"], False)
    assert _page(origin_store, start_after=b"d") == ([], False)


def test_list_start_after_before_the_prefix_starts_at_the_prefix(origin_store: KvStore) -> None:
    _put(origin_store, *(_rec(key) for key in ["a1", "b1", "b2", "c1"]))
    assert _page(origin_store, "b", start_after=b"a") == (["b1", "b2"], False)
    assert _page(origin_store, "b", start_after=b"b1") == (["b2"], False)
    assert _page(origin_store, "b", start_after=b"c") == ([], False)


def test_list_does_not_leak_into_the_next_namespace(origin_store: KvStore) -> None:
    # Whichever namespace hash sorts first, its listing must stop at its own keys.
    _put(origin_store, *(_rec(f"k{i}", ns=ns) for ns in ("one", "two") for i in range(3)))
    assert _page(origin_store, ns="one") == (["k0", "k1", "k2"], False)
    assert _page(origin_store, ns="two", limit=3) == (["k0", "k1", "k2"], False)


# -- iter_records / clear --------------------------------------------------------------------


def test_iter_records_follows_list_order_within_each_namespace(origin_store: KvStore) -> None:
    keys = ["b", HEAD + "a", HEAD, "é", "a", HEAD[:-1] + "z"]
    _put(origin_store, *(_rec(key, ns=ns) for ns in ("x", "y") for key in keys))
    _put(origin_store, _rec("expired", ns="x", exp=PAST))
    with origin_store.storage.read() as txn:
        records = list(origin_store.iter_records(txn))
    assert len(records) == 2 * len(keys) + 1
    for ns in ("x", "y"):
        iterated = [record.key for record in records if record.namespace == ns]
        listed, _ = _page(origin_store, ns=ns, now=0)
        assert iterated == listed
    # Expired records are included (dumps carry everything).
    assert "expired" in [record.key for record in records]
    # Each namespace's records are contiguous.
    namespaces = [record.namespace for record in records]
    assert namespaces in (["x"] * 7 + ["y"] * 6, ["y"] * 6 + ["x"] * 7)


def test_clear_empties_every_kv_table(origin_store: KvStore) -> None:
    _put(origin_store, _rec("a"), _rec(HEAD + "b"), _rec("c", exp=PAST))
    origin_store.storage.write_sync(origin_store.clear)
    assert _get(origin_store, "a") is None
    assert _page(origin_store, now=0) == ([], False)
    with origin_store.storage.read() as txn:
        assert list(origin_store.iter_records(txn)) == []
        assert origin_store.expired_keys(txn, NOW, 10) == []
    # The store is usable after clearing.
    _put(origin_store, _rec("fresh"))
    assert _page(origin_store) == (["fresh"], False)


def test_meta_u64_round_trips_with_a_default(origin_store: KvStore) -> None:
    with origin_store.storage.read() as txn:
        assert origin_store.get_u64(txn, b"counter", default=7) == 7
    origin_store.storage.write_sync(lambda txn: origin_store.put_u64(txn, b"counter", 2**63))
    with origin_store.storage.read() as txn:
        assert origin_store.get_u64(txn, b"counter") == 2**63


# -- record encoding -------------------------------------------------------------------------


@given(
    key=st.text(min_size=1, max_size=200),
    value=st.binary(max_size=300),
    metadata=st.text(max_size=100),
    expiration=st.integers(0, 2**62),
    seq=st.integers(0, 2**64 - 1),
)
def test_record_encoding_round_trips(
    key: str, value: bytes, metadata: str, expiration: int, seq: int
) -> None:
    record = Record("ns", key, value, metadata, expiration, seq)
    assert decode_record("ns", encode_record(record)) == record


# -- property: paginated list equals sorted keys -------------------------------------------

_ALPHABET = st.sampled_from(["a", "b", "z", "/", "\x00", "é", "日", "😀"])
_HEADS = [
    HEAD,  # exactly 500 bytes
    HEAD[:-1],  # 499 bytes
    "h" * 498 + "日",  # 501 bytes: the 500-byte cut falls inside a character
    "h" * 499 + "é",  # 501 bytes
]


def _fit_512(key: str) -> str:
    while len(key.encode()) > 512:
        key = key[:-1]
    return key


_SHORT_KEYS = st.text(_ALPHABET, min_size=1, max_size=6)
_LONG_KEYS = st.builds(
    lambda head, tail: _fit_512(head + tail),
    st.sampled_from(_HEADS),
    st.text(_ALPHABET, max_size=5),
)
_KEYS = st.dictionaries(st.one_of(_SHORT_KEYS, _LONG_KEYS), st.booleans(), max_size=40)


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KvStore]:
    storage = Storage(Path(tmp_path_factory.mktemp("kvprop")) / "lmdb", 256 * 1024**2)
    yield KvStore(storage, track_expiry=True)
    storage.close()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(keys=_KEYS, limit=st.integers(1, 7), data=st.data())
def test_paginated_list_equals_byte_sorted_keys_with_prefix(
    shared_store: KvStore, keys: dict[str, bool], limit: int, data: st.DataObject
) -> None:
    store = shared_store
    prefix = data.draw(
        st.one_of(
            st.just(""),
            st.text(_ALPHABET, max_size=2),
            st.sampled_from([HEAD, HEAD[:-1], HEAD + "a", "h" * 498, "h" * 300]),
            st.sampled_from(sorted(keys) or [""]).flatmap(
                lambda key: st.integers(0, len(key)).map(lambda n: key[:n])
            ),
        ),
        label="prefix",
    )

    def load(txn: object) -> None:
        store.clear(txn)
        for key, expired in keys.items():
            store.put(txn, _rec(key, exp=PAST if expired else 0))
            # The same key in a neighbour namespace must never show up.
            store.put(txn, _rec(key, ns="neighbour"))

    store.storage.write_sync(load)

    expected = _bytes_order(
        [key for key, expired in keys.items() if not expired and key.startswith(prefix)]
    )
    pages = _list_all(store, prefix, limit)
    assert [key for page, _ in pages for key in page] == expected
    for page, more in pages[:-1]:
        assert more and len(page) == limit
    assert not pages[-1][1]
    assert len(pages[-1][0]) <= limit

    # Iteration (dumps) follows the same order, expired records included.
    with store.storage.read() as txn:
        iterated = [r.key for r in store.iter_records(txn) if r.namespace == "app"]
    assert iterated == _bytes_order(list(keys))


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(keys=_KEYS, limit=st.integers(1, 50), data=st.data())
def test_list_after_any_cursor_continues_in_byte_order(
    shared_store: KvStore, keys: dict[str, bool], limit: int, data: st.DataObject
) -> None:
    store = shared_store
    start_after = data.draw(
        st.one_of(
            st.text(_ALPHABET, min_size=1, max_size=3),
            st.builds(
                lambda head, tail: _fit_512(head + tail),
                st.sampled_from(_HEADS),
                st.text(_ALPHABET, max_size=4),
            ),
            st.sampled_from(sorted(keys) or ["a"]).flatmap(
                lambda key: st.sampled_from([key, key + "\x00", key[:-1] or key])
            ),
        ),
        label="start_after",
    ).encode()
    prefix = data.draw(st.sampled_from(["", "h", HEAD[:-1], "a"]), label="prefix")

    def load(txn: object) -> None:
        store.clear(txn)
        for key, expired in keys.items():
            store.put(txn, _rec(key, exp=PAST if expired else 0))

    store.storage.write_sync(load)

    matching = _bytes_order(
        [
            key
            for key, expired in keys.items()
            if not expired and key.startswith(prefix) and key.encode() > start_after
        ]
    )
    listed, more = _page(store, prefix, start_after, limit)
    assert listed == matching[:limit]
    assert more == (len(matching) > limit)


def test_apply_all_matches_applying_one_entry_at_a_time(tmp_path: Path) -> None:
    entries = [
        kv_pb2.LogEntry(seq=1, namespace="a", op=kv_pb2.LOG_OP_PUT, key="k1", value=b"1"),
        kv_pb2.LogEntry(seq=2, namespace="b", op=kv_pb2.LOG_OP_PUT, key="k1", value=b"2"),
        kv_pb2.LogEntry(
            seq=3, namespace="a", op=kv_pb2.LOG_OP_PUT, key="k2", value=b"3", metadata_json="{}"
        ),
        kv_pb2.LogEntry(seq=4, namespace="a", op=kv_pb2.LOG_OP_DELETE, key="k1"),
        kv_pb2.LogEntry(seq=5, namespace="c", op=kv_pb2.LOG_OP_PUT, key=HEAD + "x", value=b"5"),
    ]
    together = KvStore(Storage(tmp_path / "together", durable=False), track_expiry=False)
    one_by_one = KvStore(Storage(tmp_path / "one", durable=False), track_expiry=False)
    together.storage.write_inline(lambda txn: together.apply_all(txn, entries))
    for entry in entries:
        one_by_one.storage.write_sync(lambda txn, entry=entry: one_by_one.apply(txn, entry))

    def dump(store: KvStore) -> list[Record]:
        with store.storage.read() as txn:
            return list(store.iter_records(txn))

    assert dump(together) == dump(one_by_one)
    # Records come in (namespace hash, key) order: compare as a set of contents.
    assert sorted((r.namespace, r.key, r.value) for r in dump(together)) == [
        ("a", "k2", b"3"),
        ("b", "k1", b"2"),
        ("c", HEAD + "x", b"5"),
    ]
    for store in (together, one_by_one):
        store.storage.close()


# -- record ids and the layout ----------------------------------------------------------------


def test_keys_either_side_of_the_short_id_bound_round_trip(origin_store: KvStore) -> None:
    edge = "k" * SHORT_KEY_BYTES_MAX
    keys = [edge, edge + "k", "k" * 512, "k" * 486 + "x" * 26]
    _put(origin_store, *(_rec(key, key[-3:].encode() + bytes([len(key) % 256])) for key in keys))
    for key in keys:
        found = _get(origin_store, key)
        assert found is not None and found.value == key[-3:].encode() + bytes([len(key) % 256])
    assert _page(origin_store) == (_bytes_order(keys), False)
    origin_store.storage.write_sync(lambda txn: origin_store.delete(txn, "app", edge + "k"))
    assert _get(origin_store, edge + "k") is None
    assert _get(origin_store, "k" * 512) is not None


def test_record_ids_fit_lmdb_keep_short_keys_in_order_and_tell_long_keys_apart() -> None:
    ns_hash = namespace_hash("app")
    short = [b"a", b"a\x00", b"ab", b"b", b"k" * SHORT_KEY_BYTES_MAX]
    ids = [record_id(ns_hash, key) for key in short]
    assert ids == sorted(ids)  # neighbouring keys, neighbouring records
    long_keys = [b"k" * 503, b"k" * 512, b"k" * 511 + b"j"]
    all_ids = ids + [record_id(ns_hash, key) for key in long_keys]
    assert len(set(all_ids)) == len(all_ids)
    assert max(len(rid) for rid in all_ids) <= 511  # LMDB's key limit


def _write_layout_1(storage: Storage, records: list[Record]) -> None:
    """What a store written before record ids kept key order holds (layout 1): records
    under ns_hash + blake2b(key), expiry keys on that id, no layout in meta."""
    index = storage.db("kv_index", dupsort=True)
    stored = storage.db("kv_records")
    namespaces = storage.db("kv_namespaces")
    expiry = storage.db("kv_expiry")

    def work(txn: object) -> None:
        for record in records:
            key = record.key.encode()
            ns_hash = namespace_hash(record.namespace)
            old_id = ns_hash + key_hash(key)
            txn.put(ns_hash, record.namespace.encode(), db=namespaces)  # type: ignore[attr-defined]
            txn.put(  # type: ignore[attr-defined]
                ns_hash + key[:KEY_HEAD_BYTES], b"\x00" + key[KEY_HEAD_BYTES:], db=index
            )
            txn.put(old_id, encode_record(record), db=stored)  # type: ignore[attr-defined]
            if record.expiration:
                txn.put(encode_u64(record.expiration) + old_id, b"\x01", db=expiry)  # type: ignore[attr-defined]

    storage.write_sync(work)


def test_a_layout_1_store_is_upgraded_when_it_opens_and_keeps_every_record(
    tmp_path: Path,
) -> None:
    records = [
        _rec("a"),
        _rec("b", b"due", exp=PAST),
        _rec("later", exp=FUTURE, seq=7),
        _rec(HEAD + "x", b"long", ns="other", exp=PAST),
        _rec(HEAD + "y", b"long too", ns="other"),
        _rec("k" * 512, b"longest"),
    ]
    storage = Storage(tmp_path / "lmdb")
    _write_layout_1(storage, records)
    storage.close()

    for _ in range(2):  # the second open finds the layout recorded and changes nothing
        storage = Storage(tmp_path / "lmdb")
        store = KvStore(storage, track_expiry=True)
        with storage.read() as txn:
            assert store.get_u64(txn, LAYOUT_KEY) == LAYOUT
            assert sorted(store.iter_records(txn), key=lambda r: (r.namespace, r.key)) == sorted(
                records, key=lambda r: (r.namespace, r.key)
            )
            assert store.expired_keys(txn, NOW, 10) == [("app", "b"), ("other", HEAD + "x")]
            assert store.expired_keys(txn, FUTURE, 10)[-1] == ("app", "later")
            assert txn.stat(store.records)["entries"] == len(records)
        assert _page(store, ns="other", now=PAST - 1) == ([HEAD + "x", HEAD + "y"], False)
        storage.close()
    # And it is written in the new layout: an overwrite and a delete leave no stale id.
    storage = Storage(tmp_path / "lmdb")
    store = KvStore(storage, track_expiry=True)
    _put(store, _rec("b", b"renewed"))
    storage.write_sync(lambda txn: store.delete(txn, "app", "k" * 512))
    with storage.read() as txn:
        assert txn.stat(store.records)["entries"] == len(records) - 1
        assert store.expired_keys(txn, NOW, 10) == [("other", HEAD + "x")]
    storage.close()


def test_a_store_of_a_later_layout_is_refused(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "lmdb")
    meta = storage.db("meta")
    storage.write_sync(lambda txn: txn.put(LAYOUT_KEY, encode_u64(LAYOUT + 1), db=meta))
    with pytest.raises(RuntimeError, match=f"layout {LAYOUT + 1}"):
        KvStore(storage, track_expiry=True)
    storage.close()


def test_write_inline_refuses_a_durable_store(origin_store: KvStore) -> None:
    with pytest.raises(RuntimeError, match="fsync"):
        origin_store.storage.write_inline(lambda txn: None)


# -- a replica's batched apply ---------------------------------------------------------------

_OPS = st.lists(
    st.tuples(
        st.sampled_from([kv_pb2.LOG_OP_PUT, kv_pb2.LOG_OP_PUT, kv_pb2.LOG_OP_DELETE]),
        st.sampled_from(["app", "other"]),
        # A few keys often, so that a batch puts, deletes and puts the same key again.
        st.one_of(
            st.sampled_from(["a", "b", HEAD + "x", HEAD + "y", "k" * 512]), _SHORT_KEYS, _LONG_KEYS
        ),
        st.binary(max_size=8),
        st.integers(0, 3).map(lambda n: FUTURE + n if n else 0),
    ),
    max_size=30,
)


def _apply_all(store: KvStore, entries: list[kv_pb2.LogEntry], txn: object) -> None:
    store.apply_all(txn, entries)


def _contents(store: KvStore) -> list[list[tuple[bytes, bytes]]]:
    """Every key/value pair of the sub-databases a replica has, in order."""
    with store.storage.read() as txn:
        return [
            list(txn.cursor(db=db).iternext(keys=True, values=True))
            for db in (store.index, store.records, store.namespaces)
        ]


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(_OPS, min_size=1, max_size=4))
def test_a_replicas_batched_apply_stores_what_entry_by_entry_puts_store(
    tmp_path_factory: pytest.TempPathFactory,
    batches: list[list[tuple[int, str, str, bytes, int]]],
) -> None:
    # A replica (no expiry index) hands a run of puts to LMDB in one putmulti per
    # sub-database; the origin applies entry by entry and moves expiry entries. Same keys
    # again in a batch, long keys sharing a 500-byte head, a key of the 512-byte limit,
    # deletes between puts: the stores must hold the same index, records and namespaces
    # (so no record is left without its index entry, nor the other way round).
    root = Path(tmp_path_factory.mktemp("batched"))
    origin_storage = Storage(root / "origin", 64 * 1024**2)
    replica_storage = Storage(root / "replica", 64 * 1024**2)
    origin = KvStore(origin_storage, track_expiry=True)
    replica = KvStore(replica_storage, track_expiry=False)
    try:
        seq = 0
        for batch in batches:
            entries = []
            for op, namespace, key, value, expiration in batch:
                seq += 1
                entries.append(
                    kv_pb2.LogEntry(
                        seq=seq,
                        op=op,
                        namespace=namespace,
                        key=key,
                        value=value,
                        metadata_json='{"n": 1}' if value else "",
                        expiration=expiration if op == kv_pb2.LOG_OP_PUT else 0,
                    )
                )
            for store in (origin, replica):
                store.storage.write_sync(partial(_apply_all, store, entries))
        assert _contents(replica) == _contents(origin)
    finally:
        origin_storage.close()
        replica_storage.close()
