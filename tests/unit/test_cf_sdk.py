"""Cloudflare's Python Workers API on edgepop (`sdk/`, `edgepop.worker_api`, bindings):
the call forms Cloudflare's code uses, over edgepop's own runtime, without sockets."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
import pytest

from edge.v1 import kv_pb2
from edgepop import durable, worker_api
from edgepop.errors import UpstreamError
from edgepop.objectid import DurableObjectId
from edgepop.worker_api import ExecutionContext, KvConflictError
from pop_node.workers.bindings import KvBinding, ObjectNamespaceBinding
from pyodide.ffi import create_proxy, to_js
from workers import DurableObject, JsDict, Request, Response, python_from_rpc, python_to_rpc

T = TypeVar("T")


def test_response_takes_cloudflares_positional_arguments_and_helpers() -> None:
    response = Response("gone", 410, "Gone", {"X-A": "1"})
    assert (response.status, response.status_text, response.headers["X-A"]) == (410, "Gone", "1")
    redirect = Response.redirect("https://example.com/", 301)
    assert (redirect.status, redirect.headers["Location"]) == (301, "https://example.com/")
    with pytest.raises(ValueError, match="redirect status"):
        Response.redirect("/x", 200)
    assert Response.from_json({"a": 1}).body == b'{"a": 1}'


def test_request_reads_as_bytes_and_clones() -> None:
    request = Request("http://x.test/a", method="post", body=b"hi")
    assert asyncio.run(request.bytes()) == b"hi"
    clone = request.clone()
    assert (clone.url, clone.method, clone.body) == (request.url, "POST", b"hi")
    assert request.js_object is request


def test_values_cross_rpc_as_python_and_dicts_read_as_attributes() -> None:
    value = {"quote": "q", "rows": [{"n": 1}]}
    assert to_js(value) is value and create_proxy(value) is value
    received = python_from_rpc(value)
    assert isinstance(received, JsDict) and received.quote == "q" and received.rows[0].n == 1
    with pytest.raises(AttributeError):
        _ = received.missing
    with pytest.raises(TypeError, match="tuple cannot cross RPC"):
        python_to_rpc({"a": (1, 2)})


def test_ids_compare_with_ids_and_their_text() -> None:
    one = DurableObjectId("ab" * 32, "room")
    assert one == DurableObjectId("ab" * 32) and one == "ab" * 32 and one.equals(one)
    assert one.toString() == "ab" * 32 and str(one) == "ab" * 32 and one.name == "room"
    assert len({one, DurableObjectId("ab" * 32)}) == 1


# -- ctx.storage over edgepop's object storage ------------------------------------------


class MemoryStorage(durable.Storage):
    """edgepop's storage API over a dict (the transaction semantics need no disk)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.alarm: float | None = None

    async def get(self, key: str | Sequence[str]) -> Any:
        if isinstance(key, str):
            return self.data.get(key)
        return {k: self.data[k] for k in key if k in self.data}

    async def put(self, key: str | dict[str, Any], value: Any = None) -> None:
        self.data.update(key if isinstance(key, dict) else {key: value})

    async def delete(self, key: str | Sequence[str]) -> bool | int:
        if isinstance(key, str):
            return self.data.pop(key, None) is not None
        return sum(self.data.pop(k, None) is not None for k in key)

    async def list(
        self,
        *,
        prefix: str = "",
        start: str | None = None,
        end: str | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> dict[str, Any]:
        keys = sorted(
            k
            for k in self.data
            if k.startswith(prefix) and (start is None or k >= start) and (end is None or k < end)
        )
        keys = keys[::-1] if reverse else keys
        return {k: self.data[k] for k in keys[:limit]}

    async def delete_all(self) -> None:
        self.data.clear()
        self.alarm = None

    async def transaction(self, body: Callable[[durable.Storage], Awaitable[T]]) -> T:
        saved = dict(self.data)
        try:
            return await body(self)
        except BaseException:
            self.data = saved
            raise

    async def get_alarm(self) -> float | None:
        return self.alarm

    async def set_alarm(self, at: float) -> None:
        self.alarm = at

    async def delete_alarm(self) -> None:
        self.alarm = None


class MemoryState(durable.ObjectState):
    def __init__(self) -> None:
        self.id = "cd" * 32
        self.namespace = "demo.List"
        self.storage = MemoryStorage()

    async def block_concurrency_while(self, body: Callable[[], Awaitable[T]]) -> T:
        return await body()

    def sessions(self) -> list[durable.Session]:
        return []


class Notes(DurableObject):
    async def add(self, note: str) -> list[str]:
        notes = await self.ctx.storage.get("notes") or []
        notes.append(note)
        await self.ctx.storage.put("notes", to_js(notes))
        return notes


def test_a_cloudflare_object_sees_its_state_as_ctx() -> None:
    state = MemoryState()
    notes = Notes(state, {"VAR": "x"})
    assert notes.env == {"VAR": "x"} and notes.ctx.id == state.id
    assert asyncio.run(notes.add("a")) == ["a"]
    assert asyncio.run(notes.add("b")) == ["a", "b"]
    assert state.storage.data == {"notes": ["a", "b"]}


def test_storage_list_takes_cloudflares_options() -> None:
    state = MemoryState()
    storage = Notes(state, None).ctx.storage
    state.storage.data = {f"k{i}": i for i in range(6)}
    assert list(asyncio.run(storage.list({"startAfter": "k1", "limit": 2}))) == ["k2", "k3"]
    assert list(asyncio.run(storage.list(prefix="k", reverse=True, limit=1))) == ["k5"]
    assert list(asyncio.run(storage.list({"start": "k4"}))) == ["k4", "k5"]
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['allowConcurrency'\]"):
        asyncio.run(storage.list({"allowConcurrency": True}))


def test_alarms_are_in_milliseconds_as_on_cloudflare() -> None:
    state = MemoryState()
    storage = Notes(state, None).ctx.storage
    asyncio.run(storage.setAlarm(1_700_000_000_500))
    assert state.storage.alarm == 1_700_000_000.5
    assert asyncio.run(storage.getAlarm()) == 1_700_000_000_500
    at = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    asyncio.run(storage.setAlarm(at))
    assert state.storage.alarm == at.timestamp()
    asyncio.run(storage.deleteAlarm())
    assert asyncio.run(storage.getAlarm()) is None


def test_a_transaction_rolls_back_on_request_or_on_a_raise() -> None:
    state = MemoryState()
    storage = Notes(state, None).ctx.storage

    async def rolled_back(txn: Any) -> None:
        await txn.put("a", 1)
        txn.rollback()

    async def raising(txn: Any) -> None:
        await txn.put("b", 2)
        raise ValueError("no")

    async def kept(txn: Any) -> str:
        await txn.put("c", 3)
        return "done"

    assert asyncio.run(storage.transaction(rolled_back)) is None
    with pytest.raises(ValueError, match="no"):
        asyncio.run(storage.transaction(raising))
    assert asyncio.run(storage.transaction(kept)) == "done"
    assert state.storage.data == {"c": 3}


# -- KV and object namespace bindings: Cloudflare's call forms ---------------------------


class RecordingKv:
    """The KvFrontend calls a binding makes, recorded; every key holds b'"v"'."""

    def __init__(self, cached: bool = False) -> None:
        self.requests: list[Any] = []
        self.cached = cached

    def is_cached(self, namespace: str) -> bool:
        return self.cached

    async def get_cached(
        self, namespace: str, key: str, cache_ttl_s: int, time_remaining: float
    ) -> tuple[bytes, str, int] | None:
        self.requests.append(("cached", key, cache_ttl_s))
        return (b'"c"', "", 0)

    def get_eventual(self, namespace: str, key: str) -> tuple[bytes, str, int] | None:
        self.requests.append(("get", key))
        return (b'"v"', '{"m": 1}', 5) if key != "missing" else None

    async def put(self, request: kv_pb2.KvPutRequest, timeout: float) -> kv_pb2.KvPutResponse:
        self.requests.append(request)
        if request.HasField("if_seq") and request.if_seq != 5:
            raise UpstreamError(grpc.StatusCode.FAILED_PRECONDITION, "key 'k' is at seq 5")
        return kv_pb2.KvPutResponse(seq=7)

    async def list(self, request: kv_pb2.KvListRequest, timeout: float) -> kv_pb2.KvListResponse:
        self.requests.append(request)
        return kv_pb2.KvListResponse(list_complete=True)


def test_kv_reads_take_cloudflares_type_forms() -> None:
    kv = KvBinding(RecordingKv(), "ns")  # type: ignore[arg-type]
    assert asyncio.run(kv.get("k")) == '"v"'
    assert asyncio.run(kv.get("k", "json")) == "v"
    assert asyncio.run(kv.get("k", {"type": "json", "cacheTtl": 60})) == "v"
    assert asyncio.run(kv.get("k", type="json", cacheTtl=30)) == "v"
    assert asyncio.run(kv.get(["k", "missing"], "json")) == {"k": "v", "missing": None}
    found = asyncio.run(kv.getWithMetadata("k", "json"))
    assert found == {"value": "v", "metadata": {"m": 1}, "seq": 5}
    with pytest.raises(ValueError, match="cacheTtl must be an integer of at least 30"):
        asyncio.run(kv.get("k", cacheTtl=10))
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['cache'\]"):
        asyncio.run(kv.get("k", {"cache": 1}))


def test_a_cloudflare_mode_namespace_reads_through_the_cache_with_cacheTtl() -> None:
    frontend = RecordingKv(cached=True)
    kv = KvBinding(frontend, "ns")  # type: ignore[arg-type]
    assert asyncio.run(kv.get("k", "json")) == "c"
    assert asyncio.run(kv.get("k", {"type": "json", "cacheTtl": 45})) == "c"
    # Other consistency levels are edgepop's own and bypass Cloudflare's cache.
    assert asyncio.run(kv.get("k", "json", consistency="eventual", min_seq=0)) == "c"
    assert frontend.requests == [("cached", "k", 60), ("cached", "k", 45), ("cached", "k", 60)]


def test_kv_writes_and_lists_take_options_dicts_or_keywords() -> None:
    frontend = RecordingKv()
    kv = KvBinding(frontend, "ns")  # type: ignore[arg-type]
    assert asyncio.run(kv.put("a", "1", expirationTtl=60, metadata={"x": 1})) == 7
    asyncio.run(kv.put("b", b"2", {"expiration": 2_000_000_000}))
    asyncio.run(kv.list({"prefix": "a", "limit": 5}))
    first, second, listed = frontend.requests
    assert (first.expiration_ttl, first.metadata_json) == (60, '{"x": 1}')
    assert second.expiration == 2_000_000_000
    assert (listed.prefix, listed.limit) == ("a", 5)


def test_a_compare_and_set_put_fails_cleanly_when_the_key_moved_on() -> None:
    frontend = RecordingKv()
    kv = KvBinding(frontend, "ns")  # type: ignore[arg-type]
    seq = asyncio.run(kv.getWithMetadata("k"))["seq"]
    assert asyncio.run(kv.put("k", "new", only_if_seq=seq)) == 7
    with pytest.raises(KvConflictError, match="is at seq 5"):
        asyncio.run(kv.put("k", "lost", only_if_seq=4))
    assert [r.if_seq for r in frontend.requests if isinstance(r, kv_pb2.KvPutRequest)] == [5, 4]
    asyncio.run(kv.put("k", "plain"))
    assert not frontend.requests[-1].HasField("if_seq")


def test_object_namespaces_make_cloudflare_ids_and_stubs() -> None:
    namespace = ObjectNamespaceBinding(router=None, namespace="demo.List")  # type: ignore[arg-type]
    by_name = namespace.idFromName("groceries")
    assert by_name == namespace.id_from_name("groceries") and by_name.name == "groceries"
    assert namespace.idFromString(by_name.toString()) == by_name
    assert namespace.newUniqueId() != namespace.newUniqueId()
    stub = namespace.get(by_name)
    assert (stub.id, stub.name) == (str(by_name), "groceries")
    assert namespace.getByName("groceries").id == str(by_name)


class FakeScope:
    """The request scope the runtime sets while a worker runs (edgepop.worker_api.current)."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.context = ExecutionContext()

    async def fetch(self, request: Any) -> Any:
        raise AssertionError("no subrequests here")

    @property
    def cache(self) -> Any:
        raise AssertionError("no cache here")


def test_workers_env_and_wait_until_act_for_the_request_being_handled() -> None:
    import workers

    with pytest.raises(RuntimeError, match="only available while a request is handled"):
        _ = workers.env
    outside = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="outside a request"):
        workers.wait_until(outside)
    outside.close()

    async def handle(scope: FakeScope) -> Any:
        token = worker_api.current.set(scope)
        try:
            work = asyncio.sleep(0)
            workers.wait_until(work)
            return workers.env, scope.context.pending == [work]
        finally:
            worker_api.current.reset(token)

    scope = FakeScope({"NAME": "tokyo"})
    env, queued = asyncio.run(handle(scope))
    assert env == {"NAME": "tokyo"} and queued
    for pending in scope.context.pending:
        pending.close()  # never awaited: the runtime would have
