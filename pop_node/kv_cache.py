"""Cloudflare KV's read cache at one PoP, for namespaces in Cloudflare mode. Pure.

On Cloudflare a KV read is answered from the PoP's cache when it holds the key; a miss
fetches the value from the central store and keeps it (or its absence: negative lookups
are cached too) for `cacheTtl` seconds, 60 by default and at least 30. A write made
elsewhere stays invisible at a PoP that cached the key until the entry expires: the
staleness Cloudflare documents, which edgepop's replicated mode does not show. A write
made through this PoP refreshes its own entry (visible at once where it was made).

Bounded: at most `entries_max` keys, least recently used out first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

# (value, metadata_json, expiration) of a found key; None caches "not found".
Found = tuple[bytes, str, int] | None

CACHE_TTL_S_DEFAULT = 60
CACHE_TTL_S_MIN = 30
CACHE_ENTRIES_MAX_DEFAULT = 100_000


@dataclass(slots=True)
class CachedRead:
    found: Found
    # time.monotonic() at which the entry stops answering.
    expires_at: float


class ReadCache:
    def __init__(self, entries_max: int = CACHE_ENTRIES_MAX_DEFAULT) -> None:
        self.entries_max = entries_max
        self._entries: OrderedDict[tuple[str, str], CachedRead] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, namespace: str, key: str, now: float) -> CachedRead | None:
        """The live entry for the key, or None (never cached, or expired: a miss)."""
        entry = self._entries.get((namespace, key))
        if entry is None:
            return None
        if entry.expires_at <= now:
            del self._entries[(namespace, key)]
            return None
        self._entries.move_to_end((namespace, key))
        return entry

    def store(self, namespace: str, key: str, found: Found, ttl_s: float, now: float) -> None:
        self._entries[(namespace, key)] = CachedRead(found, now + ttl_s)
        self._entries.move_to_end((namespace, key))
        while len(self._entries) > self.entries_max:
            self._entries.popitem(last=False)


def check_cache_ttl(cache_ttl_s: object) -> int:
    """cacheTtl as Cloudflare takes it: whole seconds, at least 30 (ValueError if not)."""
    if isinstance(cache_ttl_s, bool) or not isinstance(cache_ttl_s, int):
        raise ValueError(f"cacheTtl must be an integer of at least {CACHE_TTL_S_MIN} seconds")
    if cache_ttl_s < CACHE_TTL_S_MIN:
        raise ValueError(f"cacheTtl must be an integer of at least {CACHE_TTL_S_MIN} seconds")
    return cache_ttl_s
