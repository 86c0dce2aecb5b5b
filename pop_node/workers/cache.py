"""The PoP's HTTP cache (the CDN layer): what origin responses may be kept, and for how long.

Shared-cache rules of RFC 9111, the parts a CDN edge applies: `no-store` and `private`
are never stored; `s-maxage` wins over `max-age`; `no-cache` (revalidate every time) is
not stored either, as this cache does not revalidate. `Vary` keys an entry by the
request headers it names (`Vary: *` is never stored). Entries live in this PoP only
(each PoP is its own cache) and the whole cache is bounded in bytes (LRU). Pure but for
the clock, which callers pass in.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

CACHE_BYTES_MAX = 64 * 1024 * 1024
CACHEABLE_STATUSES = frozenset({200, 203, 204, 300, 301, 404, 410})
_DIRECTIVE_RE = re.compile(r"\s*([A-Za-z-]+)\s*(?:=\s*\"?([^\",]*)\"?)?\s*")


def cache_control(header: str) -> dict[str, str]:
    directives = {}
    for part in header.split(","):
        match = _DIRECTIVE_RE.fullmatch(part)
        if match and match.group(1):
            directives[match.group(1).lower()] = match.group(2) or ""
    return directives


def freshness_s(headers: Mapping[str, str]) -> float:
    """How long a shared cache may serve the response (0 = do not store)."""
    directives = cache_control(headers.get("Cache-Control", ""))
    if {"no-store", "private", "no-cache"} & directives.keys():
        return 0.0
    for name in ("s-maxage", "max-age"):
        if name in directives:
            try:
                return max(0.0, float(directives[name]))
            except ValueError:
                return 0.0
    return 0.0


def vary_names(headers: Mapping[str, str]) -> tuple[str, ...] | None:
    """Request headers that key the entry; None for `Vary: *` (never cacheable)."""
    names = tuple(
        sorted(name.strip().lower() for name in headers.get("Vary", "").split(",") if name.strip())
    )
    return None if "*" in names else names


@dataclass(frozen=True)
class CachedResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float
    expires_at: float
    # (header name, value in the request that stored it) for each Vary header.
    vary: tuple[tuple[str, str], ...]

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers) + 64

    def matches(self, request_headers: Mapping[str, str]) -> bool:
        return all(request_headers.get(name, "") == value for name, value in self.vary)


class HttpCache:
    def __init__(self, bytes_max: int = CACHE_BYTES_MAX) -> None:
        self.bytes_max = bytes_max
        self.bytes_used = 0
        self._entries: OrderedDict[str, list[CachedResponse]] = OrderedDict()

    def match(
        self, url: str, request_headers: Mapping[str, str], now: float
    ) -> CachedResponse | None:
        variants = self._entries.get(url)
        if not variants:
            return None
        for entry in variants:
            if entry.matches(request_headers):
                if entry.expires_at <= now:
                    self._remove(url, entry)
                    return None
                self._entries.move_to_end(url)
                return entry
        return None

    def put(
        self,
        url: str,
        request_headers: Mapping[str, str],
        status: int,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        now: float,
    ) -> bool:
        """Store a response if its headers allow; True when stored."""
        header_list = tuple(headers)
        header_map = {k.title(): v for k, v in header_list}
        if "Set-Cookie" in header_map:
            return False  # one client's cookie must never be replayed to the next
        ttl = freshness_s(header_map)
        names = vary_names(header_map)
        if ttl <= 0 or names is None or status not in CACHEABLE_STATUSES:
            return False
        entry = CachedResponse(
            status=status,
            headers=header_list,
            body=body,
            stored_at=now,
            expires_at=now + ttl,
            vary=tuple((name, request_headers.get(name, "")) for name in names),
        )
        if entry.size > self.bytes_max:
            return False
        variants = [v for v in self._entries.get(url, []) if v.vary != entry.vary]
        for old in self._entries.get(url, []):
            if old.vary == entry.vary:
                self.bytes_used -= old.size
        variants.append(entry)
        self._entries[url] = variants
        self._entries.move_to_end(url)
        self.bytes_used += entry.size
        while self.bytes_used > self.bytes_max and self._entries:
            _, evicted = self._entries.popitem(last=False)
            self.bytes_used -= sum(v.size for v in evicted)
        return True

    def delete(self, url: str) -> bool:
        variants = self._entries.pop(url, None)
        if not variants:
            return False
        self.bytes_used -= sum(v.size for v in variants)
        return True

    def _remove(self, url: str, entry: CachedResponse) -> None:
        variants = [v for v in self._entries.get(url, []) if v is not entry]
        self.bytes_used -= entry.size
        if variants:
            self._entries[url] = variants
        else:
            self._entries.pop(url, None)

    def __len__(self) -> int:
        return sum(len(v) for v in self._entries.values())
