"""Durable Object storage on one node (real LMDB in a temp dir), and its standby side.

The store refuses anything from an epoch older than one it has seen (commit, claim, full
replace): that is what keeps a deposed owner's late writes out. The standby side
(`ObjectHost.apply_replica`) adds the sequence check: an update applies only on top of
the commit it was made after, else the owner must send the object in full.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from edge.v1 import objects_pb2
from edgepop import objectid
from edgepop.storage import Storage
from pop_node.objects.builtin import BUILTIN_CLASSES
from pop_node.objects.host import ObjectHost
from pop_node.objects.store import (
    ALARM_KEY,
    ObjectMeta,
    ObjectStore,
    StaleEpochError,
    Write,
    decode_alarm,
    encode_alarm,
    okey,
)
from tests.unit.conftest import object_host

NAMESPACE = "Counter"
OBJECT_ID = objectid.id_from_name(NAMESPACE, "store-test")
OKEY = okey(NAMESPACE, OBJECT_ID)


@pytest.fixture
def store(storage: Storage) -> ObjectStore:
    return ObjectStore(storage)


def _commit(
    storage: Storage,
    store: ObjectStore,
    epoch: int,
    seq: int,
    writes: list[Write],
    object_key: bytes = OKEY,
) -> None:
    storage.write_sync(lambda txn: store.commit(txn, NAMESPACE, object_key, epoch, seq, writes))


def _items(storage: Storage, store: ObjectStore, object_key: bytes = OKEY) -> dict[bytes, bytes]:
    with storage.read() as txn:
        return dict(store.items(txn, object_key))


def _meta(storage: Storage, store: ObjectStore, object_key: bytes = OKEY) -> ObjectMeta:
    with storage.read() as txn:
        return store.read_meta(txn, object_key)


# -- epochs ------------------------------------------------------------------------------


def test_commit_applies_writes_and_records_epoch_seq_and_namespace(
    storage: Storage, store: ObjectStore
) -> None:
    _commit(storage, store, 1, 1, [(b"a", b"1"), (b"b", b"2")])
    _commit(storage, store, 1, 2, [(b"a", None), (b"c", b"3")])
    assert _items(storage, store) == {b"b": b"2", b"c": b"3"}
    assert _meta(storage, store) == ObjectMeta(epoch=1, seq=2)
    with storage.read() as txn:
        assert store.namespace_of(txn, OKEY) == NAMESPACE
        assert store.get(txn, OKEY, b"c") == b"3"
        assert store.get(txn, OKEY, b"a") is None


def test_commit_from_an_older_epoch_is_refused_and_changes_nothing(
    storage: Storage, store: ObjectStore
) -> None:
    _commit(storage, store, 2, 5, [(b"a", b"new")])
    with pytest.raises(StaleEpochError):
        _commit(storage, store, 1, 6, [(b"a", b"deposed"), (b"z", b"deposed")])
    assert _items(storage, store) == {b"a": b"new"}
    assert _meta(storage, store) == ObjectMeta(epoch=2, seq=5)
    # The same epoch and newer ones are accepted.
    _commit(storage, store, 2, 6, [(b"b", b"x")])
    _commit(storage, store, 3, 7, [(b"c", b"y")])
    assert _meta(storage, store) == ObjectMeta(epoch=3, seq=7)


def test_claim_records_the_new_epoch_keeps_the_seq_and_refuses_an_older_one(
    storage: Storage, store: ObjectStore
) -> None:
    _commit(storage, store, 1, 4, [(b"a", b"1")])
    claimed = storage.write_sync(lambda txn: store.claim(txn, NAMESPACE, OKEY, 2))
    assert claimed == ObjectMeta(epoch=2, seq=4)
    assert _meta(storage, store) == ObjectMeta(epoch=2, seq=4)
    with pytest.raises(StaleEpochError):
        storage.write_sync(lambda txn: store.claim(txn, NAMESPACE, OKEY, 1))
    # Once epoch 2 is claimed, the deposed epoch-1 owner's commits are refused.
    with pytest.raises(StaleEpochError):
        _commit(storage, store, 1, 5, [(b"a", b"late")])
    assert _items(storage, store) == {b"a": b"1"}


def test_full_replace_drops_every_old_key_and_alarm_and_refuses_older_epochs(
    storage: Storage, store: ObjectStore
) -> None:
    _commit(storage, store, 1, 3, [(b"old", b"1"), (b"keep", b"x"), (ALARM_KEY, encode_alarm(5))])
    items = [(b"keep", b"y"), (b"new", b"2")]
    storage.write_sync(lambda txn: store.replace(txn, NAMESPACE, OKEY, 2, 9, items))
    assert _items(storage, store) == {b"keep": b"y", b"new": b"2"}
    assert _meta(storage, store) == ObjectMeta(epoch=2, seq=9)
    with storage.read() as txn:
        assert store.alarm(txn, OKEY) is None
    with pytest.raises(StaleEpochError):
        storage.write_sync(lambda txn: store.replace(txn, NAMESPACE, OKEY, 1, 10, []))
    assert _items(storage, store) == {b"keep": b"y", b"new": b"2"}


def test_full_replace_of_one_object_leaves_its_neighbours_alone(
    storage: Storage, store: ObjectStore
) -> None:
    neighbours = _neighbour_keys()
    for index, object_key in enumerate(neighbours):
        _commit(storage, store, 1, 1, [(b"k", bytes([index]))], object_key)
    middle = neighbours[1]
    storage.write_sync(lambda txn: store.replace(txn, NAMESPACE, middle, 1, 2, [(b"m", b"m")]))
    assert _items(storage, store, neighbours[0]) == {b"k": b"\x00"}
    assert _items(storage, store, middle) == {b"m": b"m"}
    assert _items(storage, store, neighbours[2]) == {b"k": b"\x02"}


# -- scans -------------------------------------------------------------------------------


def _neighbour_keys() -> list[bytes]:
    """Three object keys adjacent in byte order, the middle one ending in 0xff bytes."""
    middle = OKEY[:-2] + b"\xff\xff"
    before = OKEY[:-2] + b"\xff\xfe"
    after = OKEY[:-3] + bytes([OKEY[-3] + 1]) + b"\x00\x00"
    assert before < middle < after
    return [before, middle, after]


@pytest.fixture
def filled(storage: Storage, store: ObjectStore) -> list[bytes]:
    """The middle neighbour holds a..e (and \\xff-led keys); both neighbours hold decoys."""
    before, middle, after = _neighbour_keys()
    _commit(storage, store, 1, 1, [(b"decoy", b"x"), (b"\xff", b"x")], before)
    _commit(storage, store, 1, 1, [(b"a", b"x"), (b"\x00", b"x")], after)
    keys = [b"a", b"b", b"c", b"d", b"e", b"\xff", b"\xff\xff"]
    _commit(storage, store, 1, 1, [(key, key) for key in keys], middle)
    return keys


def _scan(store: ObjectStore, storage: Storage, **kwargs: Any) -> list[bytes]:
    middle = _neighbour_keys()[1]
    with storage.read() as txn:
        return [key for key, _ in store.scan(txn, middle, **kwargs)]


def test_scan_yields_only_this_objects_keys_in_order(
    store: ObjectStore, storage: Storage, filled: list[bytes]
) -> None:
    assert _scan(store, storage) == filled


def test_scan_range_is_start_inclusive_end_exclusive(
    store: ObjectStore, storage: Storage, filled: list[bytes]
) -> None:
    assert _scan(store, storage, start=b"b", end=b"d") == [b"b", b"c"]
    assert _scan(store, storage, start=b"bb") == [b"c", b"d", b"e", b"\xff", b"\xff\xff"]
    assert _scan(store, storage, end=b"b") == [b"a"]
    assert _scan(store, storage, start=b"z", end=b"a") == []


def test_reverse_scan_walks_down_from_just_below_end(
    store: ObjectStore, storage: Storage, filled: list[bytes]
) -> None:
    assert _scan(store, storage, reverse=True) == list(reversed(filled))
    assert _scan(store, storage, start=b"b", end=b"d", reverse=True) == [b"c", b"b"]
    assert _scan(store, storage, end=b"a", reverse=True) == []
    assert _scan(store, storage, start=b"e", reverse=True) == [b"\xff\xff", b"\xff", b"e"]


def test_reverse_scan_of_the_last_object_in_the_database(
    storage: Storage, store: ObjectStore
) -> None:
    last = b"\xff" * 40
    _commit(storage, store, 1, 1, [(b"a", b"1"), (b"b", b"2")], last)
    with storage.read() as txn:
        assert [k for k, _ in store.scan(txn, last, reverse=True)] == [b"b", b"a"]
        assert [k for k, _ in store.scan(txn, OKEY, reverse=True)] == []


# -- alarms ------------------------------------------------------------------------------


def test_alarm_key_writes_maintain_the_alarm_index(storage: Storage, store: ObjectStore) -> None:
    other = okey(NAMESPACE, objectid.id_from_name(NAMESPACE, "other"))
    _commit(storage, store, 1, 1, [(ALARM_KEY, encode_alarm(100.0))])
    _commit(storage, store, 1, 1, [(ALARM_KEY, encode_alarm(200.0))], other)
    with storage.read() as txn:
        assert store.alarm(txn, OKEY) == 100.0
        assert sorted(store.all_alarms(txn)) == sorted([(OKEY, 100.0), (other, 200.0)])
    _commit(storage, store, 1, 2, [(ALARM_KEY, None)])
    with storage.read() as txn:
        assert store.alarm(txn, OKEY) is None
        assert store.all_alarms(txn) == [(other, 200.0)]
    assert decode_alarm(encode_alarm(1.5)) == 1.5


# -- the standby side: ObjectHost.apply_replica ---------------------------------------------


def _host(storage: Storage) -> ObjectHost:
    return object_host(storage, BUILTIN_CLASSES, node_name="standby-1")


def _update(
    epoch: int, base_seq: int, seq: int, writes: dict[bytes, bytes | None], full: bool = False
) -> objects_pb2.ObjectReplicaUpdate:
    return objects_pb2.ObjectReplicaUpdate(
        namespace=NAMESPACE,
        id=OBJECT_ID,
        epoch=epoch,
        base_seq=base_seq,
        seq=seq,
        full=full,
        writes=[
            objects_pb2.ObjectWrite(key=k, delete=True)
            if v is None
            else objects_pb2.ObjectWrite(key=k, value=v)
            for k, v in writes.items()
        ],
    )


def _apply(host: ObjectHost, *updates: objects_pb2.ObjectReplicaUpdate) -> list[int]:
    return list(asyncio.run(host.apply_replica(list(updates))))


def test_standby_applies_consecutive_updates_and_asks_for_a_full_copy_on_a_gap(
    storage: Storage,
) -> None:
    host = _host(storage)
    applied = objects_pb2.REPLICA_RESULT_APPLIED
    need_full = objects_pb2.REPLICA_RESULT_NEED_FULL
    assert _apply(host, _update(1, 0, 1, {b"a": b"1"})) == [applied]
    assert _apply(host, _update(1, 1, 3, {b"a": None, b"b": b"2"})) == [applied]
    # Base 4 is not what this standby holds (3): nothing applied, send everything.
    assert _apply(host, _update(1, 4, 5, {b"c": b"3"})) == [need_full]
    assert _items(storage, host.store) == {b"b": b"2"}
    assert _apply(host, _update(1, 0, 5, {b"b": b"2", b"c": b"3"}, full=True)) == [applied]
    assert _items(storage, host.store) == {b"b": b"2", b"c": b"3"}
    assert _meta(storage, host.store) == ObjectMeta(epoch=1, seq=5)


def test_standby_refuses_updates_from_an_older_epoch(storage: Storage) -> None:
    host = _host(storage)
    _apply(host, _update(2, 0, 1, {b"a": b"epoch2"}))
    stale = objects_pb2.REPLICA_RESULT_STALE_EPOCH
    assert _apply(host, _update(1, 1, 2, {b"a": b"epoch1"})) == [stale]
    assert _apply(host, _update(1, 0, 9, {b"a": b"epoch1"}, full=True)) == [stale]
    assert _items(storage, host.store) == {b"a": b"epoch2"}


def test_standby_copy_from_an_older_epoch_with_the_same_seq_is_not_taken_as_in_sync(
    storage: Storage,
) -> None:
    """Epoch 1's owner fsynced seq 2 locally and died before its standby had it (never
    acknowledged). The standby took over at epoch 2 and made its own, different seq 2.
    When the old owner's node is later chosen as standby (e.g. the other node of the
    site), the owner's check at activation (base_seq = seq = 2, no writes) must not be
    answered APPLIED: the old node's seq 2 is not the owner's seq 2."""
    host = _host(storage)
    _apply(host, _update(1, 0, 1, {b"value": b"1"}))
    # This node as epoch-1 owner: its own unacknowledged local commit seq 2.
    _commit(storage, host.store, 1, 2, [(b"value", b"2"), (b"orphan", b"unacknowledged")])
    # The epoch-2 owner (at its own seq 2) checks this node as its new standby.
    check = _update(2, 2, 2, {})
    assert _apply(host, check) == [objects_pb2.REPLICA_RESULT_NEED_FULL]
    # The full copy then brings it into this owner's lineage; from there updates apply.
    full = _update(2, 0, 2, {b"value": b"2"}, full=True)
    assert _apply(host, full) == [objects_pb2.REPLICA_RESULT_APPLIED]
    assert _items(storage, host.store) == {b"value": b"2"}
    assert _apply(host, _update(2, 2, 3, {b"value": b"3"})) == [objects_pb2.REPLICA_RESULT_APPLIED]


def test_standby_deposes_its_own_live_instance_when_a_newer_owner_replicates(
    tmp_path: Path,
) -> None:
    """A node that still runs an instance at epoch 1 stops it when epoch 2 replicates to it."""
    storage = Storage(tmp_path / "deposed", 64 * 1024**2)
    host = _host(storage)

    async def scenario() -> tuple[list[int], str, bool]:
        runner = asyncio.ensure_future(host.run())
        try:
            await host.call(NAMESPACE, OBJECT_ID, "increment", "", region="tokyo")
            instance = host.instances[OKEY]
            older = await host.apply_replica([_update(1, 0, 9, {}, full=True)])
            assert list(older) == [objects_pb2.REPLICA_RESULT_STALE_EPOCH]
            newer = await host.apply_replica([_update(2, 0, 9, {b"value": b"7"}, full=True)])
            return list(newer), instance.broken, OKEY in host.instances
        finally:
            runner.cancel()
            await host.close()

    try:
        results, broken, still_active = asyncio.run(scenario())
    finally:
        storage.close()
    assert results == [objects_pb2.REPLICA_RESULT_APPLIED]
    assert broken and not still_active
