"""Request ids the platform makes for writes that arrive without one: UUIDv7 (RFC 9562),
written as 32 hex digits like the uuid4s they replace.

Why time-ordered: the origin keeps every logged write's id in an LMDB table
(`kv_requests`) until the log is truncated past it. Random ids put each write of a
commit on a page of its own, and truncation deletes from as many others; every page a
commit touches is copied, written out and fsynced. Ids that start with the time go in
together at the table's end and leave together from its start. Measured on a durable
store retaining 100,000 ids, commits of 5 writes: 812-923 us -> 530-570 us each, CPU
467-484 -> 339-386 us.
"""

from __future__ import annotations

import os
import time

_UNIX_MS_MASK = (1 << 48) - 1
_RAND_B_MASK = (1 << 62) - 1
_VERSION = 0x7
_VARIANT = 0b10


def new_request_id() -> str:
    """48 bits of Unix milliseconds, the version, 74 random bits (RFC 9562, UUIDv7)."""
    unix_ms = time.time_ns() // 1_000_000
    random_bits = int.from_bytes(os.urandom(10), "big")  # 80; 74 used
    value = (
        (unix_ms & _UNIX_MS_MASK) << 80
        | _VERSION << 76
        | (random_bits >> 68) << 64
        | _VARIANT << 62
        | (random_bits & _RAND_B_MASK)
    )
    return f"{value:032x}"
