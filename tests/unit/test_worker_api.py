"""The API workers are written against (`edgepop/worker_api.py`): Request (url parts,
cookies, bodies), Response (headers with several Set-Cookie, json, streaming), the
request-scoped `fetch` and `caches.default`, and `ctx.wait_until`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from multidict import CIMultiDict

from edgepop import worker_api
from edgepop.worker_api import ExecutionContext, Request, Response, caches, current

# -- Request -------------------------------------------------------------------------------


def test_request_exposes_method_path_query_and_host() -> None:
    request = Request("http://API.Example.com:8080/api/v1/orders?id=7&sort=asc", method="post")
    assert request.method == "POST"
    assert request.path == "/api/v1/orders"
    assert request.query == {"id": "7", "sort": "asc"}
    assert request.host == "api.example.com"
    assert Request("http://h.test").path == "/"


def test_request_headers_are_case_insensitive_and_keep_repeats() -> None:
    request = Request("http://h/", headers=[("X-Tag", "a"), ("x-tag", "b"), ("Accept", "*/*")])
    assert request.headers["ACCEPT"] == "*/*"
    assert request.headers.getall("X-TAG") == ["a", "b"]


def test_request_bodies_as_text_and_json() -> None:
    request = Request("http://h/", method="POST", body='{"n": 1, "s": "\u00e9"}')
    assert request.body == '{"n": 1, "s": "\u00e9"}'.encode()
    assert asyncio.run(request.text()) == '{"n": 1, "s": "\u00e9"}'
    assert asyncio.run(request.json()) == {"n": 1, "s": "\u00e9"}
    assert asyncio.run(Request("http://h/").json()) is None
    assert Request("http://h/", body=b"\x00\x01").body == b"\x00\x01"


def test_request_cookies_parse_every_cookie_of_the_header() -> None:
    request = Request(
        "http://h/", headers={"Cookie": "experiment-checkout-v2=variant; theme=dark; n=1"}
    )
    assert request.cookies == {"experiment-checkout-v2": "variant", "theme": "dark", "n": "1"}
    assert Request("http://h/").cookies == {}
    # Quotes around a value may be kept or stripped; the cookie itself must be there.
    quoted = Request("http://h/", headers={"cookie": 'q="quoted"'}).cookies
    assert quoted.get("q") in ("quoted", '"quoted"')


@pytest.mark.parametrize(
    ("header", "count"),
    [
        ('prefs={"theme":"dark"}; experiment-checkout-v2=variant', 2),
        ("_ga=GA1.2.3; note=hello world; experiment-checkout-v2=variant", 3),
        ('broken="unterminated; experiment-checkout-v2=variant', 2),
        ("path=/shop; experiment-checkout-v2=variant", 2),
    ],
)
def test_one_unusual_cookie_does_not_hide_the_others(header: str, count: int) -> None:
    cookies = Request("http://h/", headers={"Cookie": header}).cookies
    assert cookies.get("experiment-checkout-v2") == "variant", cookies
    assert len(cookies) == count, cookies


def test_with_url_rewrites_only_the_url() -> None:
    original = Request(
        "http://h.test/a?x=1",
        method="PUT",
        headers={"X-One": "1"},
        body=b"payload",
        cf={"country": "CN"},
    )
    rewritten = original.with_url("http://origin/cn/a?x=1")
    assert rewritten.url == "http://origin/cn/a?x=1"
    assert (rewritten.method, rewritten.body, rewritten.cf) == (
        "PUT",
        b"payload",
        {"country": "CN"},
    )
    assert rewritten.headers["X-One"] == "1"
    # The copies are independent.
    rewritten.headers["X-Two"] = "2"
    rewritten.cf["country"] = "US"
    assert "X-Two" not in original.headers
    assert original.cf["country"] == "CN"


# -- Response ------------------------------------------------------------------------------


def test_text_bodies_get_a_text_content_type_and_bytes_do_not() -> None:
    text = Response("héllo")
    assert text.body == "héllo".encode()
    assert text.headers["Content-Type"] == "text/plain; charset=utf-8"
    raw = Response(b"\x00")
    assert "Content-Type" not in raw.headers
    html = Response("<p>", headers={"content-type": "text/html"})
    assert html.headers.getall("Content-Type") == ["text/html"]
    assert Response().body == b""
    assert Response(status=204).status == 204


def test_several_set_cookie_headers_survive_construction_and_copies() -> None:
    response = Response("ok", headers=[("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2")])
    response.headers.add("Set-Cookie", "c=3; Max-Age=60; SameSite=Lax")
    assert response.headers.getall("Set-Cookie") == [
        "a=1; Path=/",
        "b=2",
        "c=3; Max-Age=60; SameSite=Lax",
    ]
    # Re-wrapping an upstream response (as the examples do) keeps all of them.
    wrapped = Response(response.body, status=response.status, headers=response.headers)
    assert wrapped.headers.getall("Set-Cookie") == response.headers.getall("Set-Cookie")
    copied = response.copy()
    copied.headers.add("Set-Cookie", "d=4")
    assert len(response.headers.getall("Set-Cookie")) == 3
    assert len(copied.headers.getall("Set-Cookie")) == 4


def test_headers_accept_mappings_pairs_and_multidicts() -> None:
    numeric: Any = {"X-A": 1}  # not a str: values are converted
    assert Response(b"", headers=numeric).headers["X-A"] == "1"
    assert Response(b"", headers=[("X-A", "1"), ("X-A", "2")]).headers.getall("X-A") == ["1", "2"]
    multi = CIMultiDict([("X-A", "1"), ("X-A", "2")])
    assert Response(b"", headers=multi).headers.getall("x-a") == ["1", "2"]


def test_json_responses() -> None:
    response = Response.json({"ok": True, "n": [1, 2]}, status=201, headers={"X-Id": "7"})
    assert response.status == 201
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["X-Id"] == "7"
    assert json.loads(response.body) == {"ok": True, "n": [1, 2]}
    assert asyncio.run(response.json_body()) == {"ok": True, "n": [1, 2]}
    assert response.ok
    assert not Response.json({}, status=404).ok
    assert not Response(status=302).ok


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


def test_a_streaming_body_is_iterated_in_chunks() -> None:
    response = Response(_chunks(b"one ", b"two ", b"three"), headers={"Content-Type": "text/plain"})
    assert response.streaming
    assert response.body == b""

    async def collect() -> list[bytes]:
        return [chunk async for chunk in response.chunks()]

    assert asyncio.run(collect()) == [b"one ", b"two ", b"three"]


def test_reading_a_streaming_body_buffers_it_once() -> None:
    response = Response(_chunks(b"a", b"b", b"c"))

    async def read_twice() -> tuple[bytes, str]:
        return await response.read(), await response.text()

    assert asyncio.run(read_twice()) == (b"abc", "abc")
    assert not response.streaming
    assert response.copy().body == b"abc"


def test_streaming_responses_refuse_what_needs_a_buffered_body() -> None:
    response = Response(_chunks(b"x"))
    with pytest.raises(RuntimeError, match="read a streaming response"):
        response.copy()
    with pytest.raises(RuntimeError, match="not a streaming response"):
        Response(b"x").chunks()


# -- request scope: fetch, caches.default, wait_until ---------------------------------------


@dataclass
class FakeScope:
    """What the runtime provides for one request: records subrequests, a dict cache."""

    fetched: list[Request] = field(default_factory=list)
    stored: dict[str, Response] = field(default_factory=dict)

    async def fetch(self, request: Request) -> Response:
        self.fetched.append(request)
        return Response(f"{request.method} {request.url}")

    @property
    def cache(self) -> FakeCache:
        return FakeCache(self.stored)


@dataclass
class FakeCache:
    stored: dict[str, Response]

    async def match(self, request: Request | str) -> Response | None:
        return self.stored.get(request if isinstance(request, str) else request.url)

    async def put(self, request: Request | str, response: Response) -> None:
        self.stored[request if isinstance(request, str) else request.url] = response

    async def delete(self, request: Request | str) -> bool:
        return (
            self.stored.pop(request if isinstance(request, str) else request.url, None) is not None
        )


def in_scope(scope: Any, coroutine: Any) -> Any:
    async def run() -> Any:
        token = current.set(scope)
        try:
            return await coroutine
        finally:
            current.reset(token)

    return asyncio.run(run())


def test_fetch_builds_the_subrequest_and_goes_through_the_request_scope() -> None:
    scope = FakeScope()
    response = in_scope(
        scope,
        worker_api.fetch(
            "http://origin/auth/validate",
            method="post",
            headers={"Authorization": "Bearer t"},
            body="{}",
        ),
    )
    assert response.body == b"POST http://origin/auth/validate"
    [sent] = scope.fetched
    assert (sent.method, sent.headers["Authorization"], sent.body) == ("POST", "Bearer t", b"{}")
    # A ready Request passes through as it is.
    prepared = Request("http://origin/x", method="DELETE")
    in_scope(scope, worker_api.fetch(prepared))
    assert scope.fetched[-1] is prepared


def test_fetch_outside_a_request_has_no_scope() -> None:
    with pytest.raises(LookupError):
        asyncio.run(worker_api.fetch("http://origin/x"))


def test_caches_default_is_the_scope_cache() -> None:
    scope = FakeScope()

    async def use_cache() -> tuple[bytes | None, bool, Response | None]:
        await caches.default.put("http://origin/k", Response("cached"))
        hit = await caches.default.match("http://origin/k")
        deleted = await caches.default.delete(Request("http://origin/k"))
        return (hit.body if hit else None), deleted, await caches.default.match("http://origin/k")

    assert in_scope(scope, use_cache()) == (b"cached", True, None)


def test_scopes_of_concurrent_requests_do_not_mix() -> None:
    first, second = FakeScope(), FakeScope()

    async def worker(scope: FakeScope, path: str) -> None:
        token = current.set(scope)
        try:
            for _ in range(3):
                await worker_api.fetch(f"http://origin/{path}")
                await asyncio.sleep(0)
        finally:
            current.reset(token)

    async def both() -> None:
        await asyncio.gather(worker(first, "one"), worker(second, "two"))

    asyncio.run(both())
    assert {r.url for r in first.fetched} == {"http://origin/one"}
    assert {r.url for r in second.fetched} == {"http://origin/two"}


def test_wait_until_collects_work_for_after_the_response() -> None:
    context = ExecutionContext()
    done: list[str] = []

    async def later() -> None:
        done.append("ran")

    work = later()
    context.wait_until(work)
    assert context.pending == [work]
    assert done == []
    asyncio.run(context.pending[0])  # type: ignore[arg-type]
    assert done == ["ran"]
