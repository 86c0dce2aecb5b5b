"""Request ids made by the platform: UUIDv7, unique, and in the order they were made (to
the millisecond)."""

from __future__ import annotations

import time
import uuid

from edgepop.requestid import new_request_id


def test_an_id_is_a_uuid7_in_32_hex_digits_carrying_the_time() -> None:
    before_ms = time.time_ns() // 1_000_000
    request_id = new_request_id()
    after_ms = time.time_ns() // 1_000_000
    assert len(request_id) == 32 and int(request_id, 16) >= 0
    parsed = uuid.UUID(hex=request_id)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert before_ms <= parsed.int >> 80 <= after_ms


def test_ids_are_unique_and_a_later_millisecond_sorts_after() -> None:
    first = [new_request_id() for _ in range(5000)]
    start_ms = time.time_ns() // 1_000_000
    deadline = time.monotonic() + 1.0
    while time.time_ns() // 1_000_000 == start_ms:  # the clock's next millisecond
        assert time.monotonic() < deadline
    later = [new_request_id() for _ in range(5000)]
    assert len(set(first + later)) == 10_000
    assert max(first) < min(later)
