"""Read-your-writes at one PoP: own acknowledged writes, kept until the stream passes them.

A write made through a PoP is acknowledged with its origin seq. Until the replication
stream has applied that seq, reads at this PoP consult the overlay, so the writer sees
its write at once while `applied_seq` stays gap-free. Pure: no I/O.

Whichever of the overlay entry and the replica's record has the higher seq wins, so a
newer write arriving from the stream is never hidden by an older own write.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from edgepop.kvstore import Record


@dataclass(frozen=True, slots=True)
class OverlayEntry:
    seq: int
    # None: the key was deleted by this write.
    record: Record | None


def newer(entry: OverlayEntry | None, record: Record | None) -> Record | None:
    """The value a read must see given an overlay entry and the replica's record."""
    if entry is None:
        return record
    if record is not None and record.seq > entry.seq:
        return record
    return entry.record


class Overlay:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], OverlayEntry] = {}
        self._by_seq: list[tuple[int, str, str]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def add(
        self, namespace: str, key: str, seq: int, record: Record | None, applied_seq: int
    ) -> None:
        """Remember an acknowledged write (ignored if the replica already has it)."""
        if seq <= applied_seq:
            return
        current = self._entries.get((namespace, key))
        if current is not None and current.seq >= seq:
            return
        self._entries[(namespace, key)] = OverlayEntry(seq, record)
        heapq.heappush(self._by_seq, (seq, namespace, key))

    def get(self, namespace: str, key: str) -> OverlayEntry | None:
        return self._entries.get((namespace, key))

    def drop_through(self, applied_seq: int) -> None:
        """Forget every write the replica has applied."""
        while self._by_seq and self._by_seq[0][0] <= applied_seq:
            seq, namespace, key = heapq.heappop(self._by_seq)
            current = self._entries.get((namespace, key))
            if current is not None and current.seq == seq:
                del self._entries[(namespace, key)]

    def in_range(
        self, namespace: str, prefix: str, start_after: bytes | None
    ) -> list[tuple[bytes, OverlayEntry]]:
        """Entries of `namespace` whose key has `prefix` and sorts after `start_after`."""
        found = []
        for (entry_namespace, key), entry in self._entries.items():
            if entry_namespace != namespace or not key.startswith(prefix):
                continue
            encoded = key.encode()
            if start_after is not None and encoded <= start_after:
                continue
            found.append((encoded, entry))
        found.sort(key=lambda item: item[0])
        return found
