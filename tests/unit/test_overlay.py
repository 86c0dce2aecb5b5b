"""Read-your-writes overlay: own writes kept until the stream applies their seq."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edgepop.kvstore import Record
from pop_node.overlay import Overlay, OverlayEntry, newer


def _rec(key: str, seq: int, value: bytes = b"v", ns: str = "app") -> Record:
    return Record(ns, key, value, "", 0, seq)


def _add(overlay: Overlay, key: str, seq: int, applied: int = 0, *, deleted: bool = False) -> None:
    record = None if deleted else _rec(key, seq, f"{key}@{seq}".encode())
    overlay.add("app", key, seq, record, applied)


# -- add / get -------------------------------------------------------------------------------


def test_add_remembers_an_acknowledged_write() -> None:
    overlay = Overlay()
    _add(overlay, "k", 5, applied=3)
    entry = overlay.get("app", "k")
    assert entry == OverlayEntry(5, _rec("k", 5, b"k@5"))
    assert len(overlay) == 1
    assert overlay.get("other", "k") is None


def test_add_ignores_a_write_the_replica_already_applied() -> None:
    overlay = Overlay()
    _add(overlay, "k", 5, applied=5)
    _add(overlay, "j", 4, applied=5)
    assert overlay.get("app", "k") is None
    assert overlay.get("app", "j") is None
    assert len(overlay) == 0


def test_newer_seq_wins_whatever_the_order_of_adds() -> None:
    overlay = Overlay()
    _add(overlay, "k", 7)
    _add(overlay, "k", 5)  # a slower, older acknowledgement arrives late
    entry = overlay.get("app", "k")
    assert entry is not None and entry.seq == 7
    _add(overlay, "k", 9, deleted=True)
    entry = overlay.get("app", "k")
    assert entry == OverlayEntry(9, None)
    assert len(overlay) == 1


# -- drop_through ----------------------------------------------------------------------------


def test_drop_through_forgets_writes_the_replica_applied() -> None:
    overlay = Overlay()
    for seq, key in enumerate(["a", "b", "c", "d"], start=1):
        _add(overlay, key, seq)
    overlay.drop_through(2)
    assert overlay.get("app", "a") is None
    assert overlay.get("app", "b") is None
    assert overlay.get("app", "c") is not None
    assert len(overlay) == 2
    overlay.drop_through(4)
    assert len(overlay) == 0


def test_drop_through_keeps_a_newer_write_of_the_same_key() -> None:
    overlay = Overlay()
    _add(overlay, "k", 3)
    _add(overlay, "k", 8)
    overlay.drop_through(5)
    entry = overlay.get("app", "k")
    assert entry is not None and entry.seq == 8
    overlay.drop_through(8)
    assert overlay.get("app", "k") is None


@given(
    writes=st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 30)), max_size=30),
    applied=st.integers(0, 30),
)
def test_overlay_holds_the_newest_unapplied_write_per_key(
    writes: list[tuple[str, int]], applied: int
) -> None:
    overlay = Overlay()
    for key, seq in writes:
        _add(overlay, key, seq)
    overlay.drop_through(applied)
    for key in ("a", "b", "c"):
        seqs = [seq for k, seq in writes if k == key]
        entry = overlay.get("app", key)
        if seqs and max(seqs) > applied:
            assert entry is not None and entry.seq == max(seqs)
        else:
            assert entry is None


# -- in_range --------------------------------------------------------------------------------


def test_in_range_orders_by_utf8_bytes_and_filters_prefix_and_namespace() -> None:
    overlay = Overlay()
    for seq, key in enumerate(["user/b", "user/é", "user/a", "admin", "user/日", "user/Z"], 1):
        _add(overlay, key, seq)
    overlay.add("other", "user/0", 99, _rec("user/0", 99, ns="other"), 0)
    found = overlay.in_range("app", "user/", None)
    assert [key for key, _ in found] == [
        b"user/Z",
        b"user/a",
        b"user/b",
        "user/é".encode(),
        "user/日".encode(),
    ]
    assert all(isinstance(entry, OverlayEntry) for _, entry in found)


def test_in_range_starts_strictly_after_start_after() -> None:
    overlay = Overlay()
    for seq, key in enumerate(["a", "b", "c", "d"], 1):
        _add(overlay, key, seq)
    assert [key for key, _ in overlay.in_range("app", "", b"b")] == [b"c", b"d"]
    assert [key for key, _ in overlay.in_range("app", "", b"bz")] == [b"c", b"d"]
    assert overlay.in_range("app", "", b"d") == []


def test_in_range_includes_deletions_as_tombstones() -> None:
    overlay = Overlay()
    _add(overlay, "gone", 4, deleted=True)
    assert overlay.in_range("app", "", None) == [(b"gone", OverlayEntry(4, None))]


# -- newer -----------------------------------------------------------------------------------


def test_newer_without_overlay_entry_is_the_record() -> None:
    record = _rec("k", 3)
    assert newer(None, record) is record
    assert newer(None, None) is None


def test_own_write_hides_an_older_replica_record() -> None:
    own = _rec("k", 9, b"mine")
    assert newer(OverlayEntry(9, own), _rec("k", 4, b"old")) is own


def test_replica_record_with_higher_seq_beats_the_overlay_entry() -> None:
    streamed = _rec("k", 12, b"someone else's newer write")
    assert newer(OverlayEntry(9, _rec("k", 9, b"mine")), streamed) is streamed
    assert newer(OverlayEntry(9, None), streamed) is streamed


def test_tombstone_hides_an_older_record() -> None:
    assert newer(OverlayEntry(9, None), _rec("k", 4)) is None


def test_own_write_shows_when_the_replica_has_no_record() -> None:
    own = _rec("k", 9)
    assert newer(OverlayEntry(9, own), None) is own
