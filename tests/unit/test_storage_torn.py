"""A non-durable store (a KV replica) that may be torn is discarded at open, and only then.

The rule is pure (`torn_reason`); the rest opens real LMDB environments in a temp dir and
changes the boot id through the test-only override, as a reboot would.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgepop.storage import (
    BOOT_ID_ENV,
    SYNC_STATE_FILE_NAME,
    Storage,
    SyncState,
    read_sync_state,
    torn_reason,
)

MAP_SIZE_BYTES = 16 * 1024**2
KEY = b"k"


def _put(storage: Storage, value: bytes) -> None:
    storage.write_sync(lambda txn: txn.put(KEY, value))


def _get(storage: Storage) -> bytes | None:
    with storage.read() as txn:
        value: bytes | None = txn.get(KEY)
    return value


# -- the rule --------------------------------------------------------------------------------


def test_an_empty_store_is_never_torn() -> None:
    assert torn_reason(None, has_data=False, boot_id="b") == ""
    assert torn_reason(SyncState("a", open=True), has_data=False, boot_id="b") == ""


def test_a_store_left_open_under_another_boot_may_be_torn() -> None:
    reason = torn_reason(SyncState("a", open=True), has_data=True, boot_id="b")
    assert "open when the machine stopped" in reason and "a" in reason and "b" in reason


def test_a_process_crash_in_this_boot_leaves_the_store_sound() -> None:
    assert torn_reason(SyncState("b", open=True), has_data=True, boot_id="b") == ""


def test_a_store_closed_cleanly_is_sound_after_a_reboot() -> None:
    assert torn_reason(SyncState("a", open=False), has_data=True, boot_id="b") == ""


def test_a_store_with_data_but_no_record_is_not_vouched_for() -> None:
    assert SYNC_STATE_FILE_NAME in torn_reason(None, has_data=True, boot_id="b")


# -- real LMDB -------------------------------------------------------------------------------


def _assert_kept(path: Path, value: bytes) -> None:
    """Reopened as a replica, the store at `path` is not discarded and still holds `value`."""
    reopened = Storage(path, MAP_SIZE_BYTES, durable=False)
    try:
        assert reopened.discarded_because == ""
        assert _get(reopened) == value
    finally:
        reopened.close()


def test_replica_left_open_then_reopened_after_a_reboot_starts_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BOOT_ID_ENV, "boot-1")
    path = tmp_path / "lmdb"
    crashed = Storage(path, MAP_SIZE_BYTES, durable=False)
    _put(crashed, b"v")
    assert read_sync_state(path) == SyncState("boot-1", open=True)
    # No close: the machine stopped with the store open.
    crashed.env.close()
    monkeypatch.setenv(BOOT_ID_ENV, "boot-2")
    reopened = Storage(path, MAP_SIZE_BYTES, durable=False)
    try:
        assert "open when the machine stopped" in reopened.discarded_because
        assert _get(reopened) is None
        assert read_sync_state(path) == SyncState("boot-2", open=True)
    finally:
        reopened.close()


def test_replica_left_open_then_reopened_in_the_same_boot_keeps_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BOOT_ID_ENV, "boot-1")
    path = tmp_path / "lmdb"
    crashed = Storage(path, MAP_SIZE_BYTES, durable=False)
    _put(crashed, b"v")
    crashed.env.close()  # a process crash: no clean close
    _assert_kept(path, b"v")


def test_replica_closed_cleanly_keeps_its_data_across_a_reboot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BOOT_ID_ENV, "boot-1")
    path = tmp_path / "lmdb"
    first = Storage(path, MAP_SIZE_BYTES, durable=False)
    _put(first, b"v")
    first.close()
    assert read_sync_state(path) == SyncState("boot-1", open=False)
    monkeypatch.setenv(BOOT_ID_ENV, "boot-2")
    _assert_kept(path, b"v")


def test_replica_whose_data_file_is_not_lmdb_starts_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BOOT_ID_ENV, "boot-1")
    path = tmp_path / "lmdb"
    Storage(path, MAP_SIZE_BYTES, durable=False).close()
    (path / "data.mdb").write_bytes(b"\x00garbage" * 4096)
    reopened = Storage(path, MAP_SIZE_BYTES, durable=False)
    try:
        assert "LMDB cannot open it" in reopened.discarded_because
        _put(reopened, b"fresh")
        assert _get(reopened) == b"fresh"
    finally:
        reopened.close()


def test_durable_store_keeps_no_sync_record_and_is_never_discarded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "lmdb"
    monkeypatch.setenv(BOOT_ID_ENV, "boot-1")
    first = Storage(path, MAP_SIZE_BYTES)
    _put(first, b"v")
    first.env.close()
    monkeypatch.setenv(BOOT_ID_ENV, "boot-2")
    reopened = Storage(path, MAP_SIZE_BYTES)
    try:
        assert reopened.discarded_because == "" and _get(reopened) == b"v"
        assert not (path / SYNC_STATE_FILE_NAME).exists()
    finally:
        reopened.close()


# -- flush: a sync only when something was committed ----------------------------------------


def test_flush_syncs_only_when_something_was_committed_since_the_last_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle replica's flush costs no sync; any commit — through `write_sync` or a
    transaction of its own, as a snapshot install makes — is synced by the next one."""
    monkeypatch.setenv(BOOT_ID_ENV, "boot-1")
    storage = Storage(tmp_path / "replica", MAP_SIZE_BYTES, durable=False)
    try:
        assert not asyncio.run(storage.flush())  # nothing committed yet
        _put(storage, b"one")
        assert asyncio.run(storage.flush())
        assert not asyncio.run(storage.flush())
        with storage.env.begin(write=True) as txn:  # the snapshot path
            txn.put(KEY, b"two")
        assert asyncio.run(storage.flush())
        storage.write_sync(lambda txn: None)  # an empty transaction commits nothing
        assert not asyncio.run(storage.flush())
    finally:
        storage.close()
