"""The PoP's HTTP cache (`pop_node/workers/cache.py`): what is stored, for how long, keyed
by what, and the byte bound. Pure: the clock is passed in, request headers are the
case-insensitive multidict the runtime uses.
"""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from pop_node.workers.cache import (
    CachedResponse,
    HttpCache,
    cache_control,
    freshness_s,
    vary_names,
)

URL = "http://origin/api/products?id=1"
NOW = 1_000_000.0


def request_headers(**headers: str) -> CIMultiDict[str]:
    """Request headers as the runtime passes them (`Accept_Language` -> Accept-Language)."""
    return CIMultiDict((name.replace("_", "-"), value) for name, value in headers.items())


def put(
    cache: HttpCache,
    cache_control_value: str | None,
    *,
    url: str = URL,
    body: bytes = b"body",
    status: int = 200,
    vary: str | None = None,
    now: float = NOW,
    request: CIMultiDict[str] | None = None,
) -> bool:
    headers = [("Content-Type", "application/json")]
    if cache_control_value is not None:
        headers.append(("Cache-Control", cache_control_value))
    if vary is not None:
        headers.append(("Vary", vary))
    return cache.put(url, request or request_headers(), status, headers, body, now)


# -- Cache-Control -----------------------------------------------------------------------


def test_cache_control_parses_directives_case_insensitively_with_quoted_values() -> None:
    assert cache_control('Public, MAX-AGE=60, s-maxage="120", no-transform') == {
        "public": "",
        "max-age": "60",
        "s-maxage": "120",
        "no-transform": "",
    }


@pytest.mark.parametrize(
    "header",
    [
        "no-store, max-age=60",
        "private, max-age=60",
        "no-cache, max-age=60",
        "public, max-age=60, no-store",
        'private="Set-Cookie", max-age=60',
    ],
)
def test_responses_a_shared_cache_must_not_keep_are_not_stored(header: str) -> None:
    cache = HttpCache()
    assert freshness_s({"Cache-Control": header}) == 0.0
    assert not put(cache, header)
    assert cache.match(URL, request_headers(), NOW) is None
    assert len(cache) == 0


@pytest.mark.parametrize("header", [None, "public", "max-age=0", "max-age=abc", "s-maxage=-5"])
def test_responses_without_a_positive_lifetime_are_not_stored(header: str | None) -> None:
    cache = HttpCache()
    assert not put(cache, header)
    assert len(cache) == 0


def test_s_maxage_wins_over_max_age_both_ways() -> None:
    assert freshness_s({"Cache-Control": "max-age=10, s-maxage=100"}) == 100.0
    assert freshness_s({"Cache-Control": "max-age=100, s-maxage=10"}) == 10.0
    # s-maxage=0 tells shared caches not to reuse it, whatever max-age says.
    assert freshness_s({"Cache-Control": "max-age=100, s-maxage=0"}) == 0.0


def test_an_entry_is_fresh_until_its_lifetime_then_gone() -> None:
    cache = HttpCache()
    assert put(cache, "public, max-age=60, s-maxage=30")
    assert cache.match(URL, request_headers(), NOW + 29.9) is not None
    assert cache.match(URL, request_headers(), NOW + 30.0) is None
    # An expired entry is dropped, not kept around.
    assert len(cache) == 0
    assert cache.bytes_used == 0


def test_a_hit_returns_the_stored_status_headers_body_and_times() -> None:
    cache = HttpCache()
    assert put(cache, "max-age=60", body=b'{"id": 1}', status=200)
    entry = cache.match(URL, request_headers(), NOW + 5)
    assert isinstance(entry, CachedResponse)
    assert entry.status == 200
    assert entry.body == b'{"id": 1}'
    assert ("Cache-Control", "max-age=60") in entry.headers
    assert entry.stored_at == NOW
    assert entry.expires_at == NOW + 60


@pytest.mark.parametrize("status", [500, 502, 201, 302, 403])
def test_statuses_outside_the_cacheable_set_are_not_stored(status: int) -> None:
    assert not put(HttpCache(), "public, max-age=60", status=status)


@pytest.mark.parametrize("status", [200, 404, 301, 410])
def test_cacheable_statuses_are_stored(status: int) -> None:
    assert put(HttpCache(), "public, max-age=60", status=status)


def test_header_names_of_any_case_are_understood() -> None:
    cache = HttpCache()
    stored = cache.put(
        URL,
        request_headers(),
        200,
        [("cache-control", "max-age=60"), ("vary", "accept-language")],
        b"x",
        NOW,
    )
    assert stored
    assert cache.match(URL, request_headers(Accept_Language="de"), NOW) is None
    assert cache.match(URL, request_headers(), NOW) is not None


# -- Vary ----------------------------------------------------------------------------------


def test_vary_names_are_lowercased_and_sorted_and_star_means_never() -> None:
    assert vary_names({"Vary": "User-Agent, Accept-Language"}) == ("accept-language", "user-agent")
    assert vary_names({}) == ()
    assert vary_names({"Vary": "Accept-Encoding, *"}) is None


def test_vary_keys_one_url_by_the_named_request_headers() -> None:
    cache = HttpCache()
    english = request_headers(Accept_Language="en")
    german = request_headers(Accept_Language="de")
    assert put(cache, "max-age=60", vary="Accept-Language", body=b"hello", request=english)
    assert cache.match(URL, german, NOW) is None
    assert put(cache, "max-age=60", vary="Accept-Language", body=b"hallo", request=german)
    assert len(cache) == 2
    hit_en = cache.match(URL, english, NOW)
    hit_de = cache.match(URL, german, NOW)
    assert hit_en is not None and hit_en.body == b"hello"
    assert hit_de is not None and hit_de.body == b"hallo"
    # The header's name matches in any case (the request headers are case-insensitive).
    assert cache.match(URL, CIMultiDict([("accept-LANGUAGE", "de")]), NOW) is hit_de
    # A request without the header is its own variant (value ""), not a wildcard.
    assert cache.match(URL, request_headers(), NOW) is None


def test_vary_on_a_header_the_storing_request_lacked_matches_only_requests_lacking_it() -> None:
    cache = HttpCache()
    assert put(cache, "max-age=60", vary="Accept-Language")
    assert cache.match(URL, request_headers(), NOW) is not None
    assert cache.match(URL, request_headers(Accept_Language="en"), NOW) is None


def test_vary_star_is_never_stored() -> None:
    cache = HttpCache()
    assert not put(cache, "public, max-age=60", vary="*")
    assert not put(cache, "public, max-age=60", vary="Accept-Language, *")
    assert len(cache) == 0


def test_storing_the_same_variant_again_replaces_it_and_keeps_the_byte_count() -> None:
    cache = HttpCache()
    assert put(cache, "max-age=60", body=b"a" * 100)
    first_bytes = cache.bytes_used
    assert put(cache, "max-age=60", body=b"b" * 100, now=NOW + 1)
    assert len(cache) == 1
    assert cache.bytes_used == first_bytes
    entry = cache.match(URL, request_headers(), NOW + 1)
    assert entry is not None and entry.body == b"b" * 100


# -- bounds and delete -----------------------------------------------------------------------


def test_the_cache_stays_within_its_byte_bound_evicting_least_recently_used() -> None:
    entry_bytes = 1000
    cache = HttpCache(bytes_max=5 * entry_bytes)
    urls = [f"http://origin/item/{index}" for index in range(5)]
    for url in urls[:4]:
        assert put(cache, "max-age=60", url=url, body=b"x" * (entry_bytes - 200))
    # Touch the oldest: it becomes the most recently used.
    assert cache.match(urls[0], request_headers(), NOW) is not None
    for url in ("http://origin/item/new-1", "http://origin/item/new-2"):
        assert put(cache, "max-age=60", url=url, body=b"x" * (entry_bytes - 200))
        assert cache.bytes_used <= cache.bytes_max
    assert cache.match(urls[0], request_headers(), NOW) is not None, "recently used: kept"
    assert cache.match(urls[1], request_headers(), NOW) is None, "least recently used: evicted"
    assert cache.match("http://origin/item/new-2", request_headers(), NOW) is not None


def test_many_entries_never_exceed_the_byte_bound_and_the_count_stays_exact() -> None:
    cache = HttpCache(bytes_max=20_000)
    for index in range(500):
        put(cache, "max-age=60", url=f"http://origin/n/{index}", body=b"y" * (index % 700))
        assert cache.bytes_used <= cache.bytes_max
    recount = sum(
        entry.size
        for url in [f"http://origin/n/{index}" for index in range(500)]
        if (entry := cache.match(url, request_headers(), NOW)) is not None
    )
    assert recount == cache.bytes_used


def test_a_response_larger_than_the_whole_cache_is_not_stored_and_evicts_nothing() -> None:
    cache = HttpCache(bytes_max=1000)
    assert put(cache, "max-age=60", url="http://origin/small", body=b"s" * 10)
    assert not put(cache, "max-age=60", url="http://origin/huge", body=b"h" * 5000)
    assert cache.match("http://origin/small", request_headers(), NOW) is not None


def test_delete_removes_every_variant_of_a_url_and_frees_its_bytes() -> None:
    cache = HttpCache()
    for language in ("en", "de", "fr"):
        put(
            cache,
            "max-age=60",
            vary="Accept-Language",
            request=request_headers(Accept_Language=language),
        )
    assert len(cache) == 3
    assert cache.delete(URL)
    assert len(cache) == 0
    assert cache.bytes_used == 0
    assert not cache.delete(URL)


def test_a_response_that_sets_a_cookie_never_hands_that_cookie_to_other_clients() -> None:
    cache = HttpCache()
    cache.put(
        URL,
        request_headers(),
        200,
        [("Cache-Control", "public, max-age=60"), ("Set-Cookie", "session=alice-secret")],
        b"page",
        NOW,
    )
    entry = cache.match(URL, request_headers(), NOW + 1)
    assert entry is None or all(name.lower() != "set-cookie" for name, _ in entry.headers)
