"""Cloudflare KV's per-PoP read cache (`pop_node/kv_cache.py`): entries live exactly
cacheTtl, absence is cached too, the bound evicts the least recently used."""

from __future__ import annotations

import pytest

from pop_node.kv_cache import CACHE_TTL_S_MIN, ReadCache, check_cache_ttl

VALUE = (b"v1", "", 0)


def test_an_entry_answers_until_its_ttl_then_misses() -> None:
    cache = ReadCache()
    cache.store("ns", "k", VALUE, 30, now=100.0)
    hit = cache.lookup("ns", "k", now=129.999)
    assert hit is not None and hit.found == VALUE
    assert cache.lookup("ns", "k", now=130.0) is None
    assert len(cache) == 0  # an expired entry is dropped when seen


def test_not_found_is_cached_like_a_value() -> None:
    cache = ReadCache()
    cache.store("ns", "missing", None, 60, now=0.0)
    hit = cache.lookup("ns", "missing", now=59.0)
    assert hit is not None and hit.found is None


def test_a_store_replaces_the_entry_and_its_expiry() -> None:
    cache = ReadCache()
    cache.store("ns", "k", VALUE, 30, now=0.0)
    cache.store("ns", "k", (b"v2", "", 0), 60, now=10.0)
    hit = cache.lookup("ns", "k", now=65.0)
    assert hit is not None and hit.found == (b"v2", "", 0)


def test_namespaces_do_not_share_keys() -> None:
    cache = ReadCache()
    cache.store("a", "k", VALUE, 30, now=0.0)
    assert cache.lookup("b", "k", now=1.0) is None


def test_the_least_recently_used_key_goes_first() -> None:
    cache = ReadCache(entries_max=2)
    cache.store("ns", "a", VALUE, 60, now=0.0)
    cache.store("ns", "b", VALUE, 60, now=0.0)
    assert cache.lookup("ns", "a", now=1.0) is not None  # a is now the most recent
    cache.store("ns", "c", VALUE, 60, now=2.0)
    assert cache.lookup("ns", "b", now=3.0) is None
    assert cache.lookup("ns", "a", now=3.0) is not None
    assert len(cache) == 2


@pytest.mark.parametrize("bad", [29, 0, -5, 30.5, "60", True])
def test_cache_ttl_is_whole_seconds_of_at_least_30(bad: object) -> None:
    with pytest.raises(ValueError, match=f"at least {CACHE_TTL_S_MIN} seconds"):
        check_cache_ttl(bad)
    assert check_cache_ttl(30) == 30
