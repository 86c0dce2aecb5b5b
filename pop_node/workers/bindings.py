"""What a worker's `env` holds: KV namespaces, Durable Object namespaces, vars, secrets,
analytics datasets. Bindings call the PoP's own frontends (the same code as the gRPC API),
so a worker's KV read is a local replica read and its object calls are routed like any.

Bindings answer Cloudflare's call forms as well as edgepop's: camelCase names
(`getWithMetadata`, `idFromName`), options as a trailing dict or as keywords
(`get(key, {"type": "json", "cacheTtl": 60})`, `put(key, value, expirationTtl=60)`), a
list of keys to `get`. Beyond Cloudflare: `consistency` / `min_seq` on reads, and writes
return their seq (a bookmark); Cloudflare's return None.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from edge.v1 import kv_pb2, objects_pb2
from edgepop import objectid
from edgepop.bundle import WorkerConfig
from edgepop.errors import EdgeError
from edgepop.metrics import PopMetrics
from edgepop.objectid import DurableObjectId
from edgepop.websocket import (
    CLOSE_ABNORMAL,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_REASON_BYTES_MAX,
    CLOSE_SERVICE_RESTART,
    CloseEvent,
    Event,
    MessageEvent,
    WebSocket,
    check_close,
    is_upgrade,
    message_payload,
)
from edgepop.worker_api import JsDict, KvConflictError, Request, Response
from pop_node.kv_cache import CACHE_TTL_S_DEFAULT, check_cache_ttl
from pop_node.objects.fetch import FETCH_METHOD, decode_response, encode_request
from pop_node.objects.sessions import serve_session
from pop_node.workers.d1 import D1Binding

if TYPE_CHECKING:
    from pop_node.kv import KvFrontend
    from pop_node.objects.router import ObjectRouter
    from pop_node.sql import SqlReplicas

CONSISTENCY = {
    "eventual": kv_pb2.CONSISTENCY_EVENTUAL,
    "bookmark": kv_pb2.CONSISTENCY_BOOKMARK,
    "strong": kv_pb2.CONSISTENCY_STRONG,
}
# Distinct analytics label values kept per process before the rest become "other".
ANALYTICS_LABEL_VALUES_MAX = 100
BINDING_CALL_TIMEOUT_S = 10.0
# Cloudflare's bound: a multi-key get takes at most 100 keys.
GET_KEYS_MAX = 100


def _options(options: Any, where: str, allowed: set[str], **given: Any) -> dict[str, Any]:
    """Cloudflare's trailing options dict merged with keywords; unknown names refused."""
    merged = {key: value for key, value in given.items() if value is not None}
    if options is not None:
        if not isinstance(options, dict):
            raise TypeError(f"{where}: options must be a dict, not {type(options).__name__}")
        merged.update(options)
    unknown = set(merged) - allowed
    if unknown:
        raise TypeError(f"{where}: unknown option(s) {sorted(unknown)}")
    return merged


def _decode(value: bytes, kind: str) -> Any:
    if kind == "text":
        return value.decode()
    if kind == "json":
        return json.loads(value)
    if kind in ("bytes", "arrayBuffer", "arraybuffer"):
        return value
    raise ValueError(f"unknown type {kind!r} (text, json or bytes)")


class KvBinding:
    """`env.MY_KV`: Workers KV on this PoP (reads local, writes through the origin)."""

    def __init__(self, frontend: KvFrontend, namespace: str) -> None:
        self._kv = frontend
        self.namespace = namespace

    async def get(
        self,
        key: str | list[str],
        type: str | dict[str, Any] = "text",
        *,
        consistency: str = "eventual",
        min_seq: int = 0,
        cacheTtl: int | None = None,
    ) -> Any:
        """A value (None when missing); for a list of keys, a dict of key -> value."""
        if isinstance(key, list):
            if not 0 < len(key) <= GET_KEYS_MAX:
                raise ValueError(f"get: 1 to {GET_KEYS_MAX} keys at once")
            return {
                one: await self.get(
                    one, type, consistency=consistency, min_seq=min_seq, cacheTtl=cacheTtl
                )
                for one in key
            }
        found = await self.get_with_metadata(
            key, type, consistency=consistency, min_seq=min_seq, cacheTtl=cacheTtl
        )
        return found["value"]

    async def get_with_metadata(
        self,
        key: str,
        type: str | dict[str, Any] = "text",
        *,
        consistency: str = "eventual",
        min_seq: int = 0,
        cacheTtl: int | None = None,
    ) -> dict[str, Any]:
        kind = type
        if isinstance(kind, dict):
            options = _options(kind, "get", {"type", "cacheTtl"}, cacheTtl=cacheTtl)
            kind, cacheTtl = options.get("type", "text"), options.get("cacheTtl")
        cache_ttl_s = CACHE_TTL_S_DEFAULT if cacheTtl is None else check_cache_ttl(cacheTtl)
        if consistency == "eventual" and min_seq == 0 and self._kv.is_cached(self.namespace):
            # Cloudflare mode: through this PoP's read cache (pop_node.kv_cache). In the
            # replicated mode there is no cache, and cacheTtl has no effect.
            cached = await self._kv.get_cached(
                self.namespace, key, cache_ttl_s, BINDING_CALL_TIMEOUT_S
            )
            if cached is None:
                return {"value": None, "metadata": None, "seq": 0}
            metadata = json.loads(cached[1]) if cached[1] else None
            return {"value": _decode(cached[0], kind), "metadata": metadata, "seq": 0}
        if consistency == "eventual" and min_seq == 0 and key.__class__ is str and key.isascii():
            # The common read, without protobuf messages. Other keys take the general path
            # so that odd ones (not text, not UTF-8) fail exactly as they always did.
            found = self._kv.get_eventual(self.namespace, key)
            if found is None:
                return {"value": None, "metadata": None, "seq": 0}
            value, metadata_json, seq = found
            metadata = json.loads(metadata_json) if metadata_json else None
            return {"value": _decode(value, kind), "metadata": metadata, "seq": seq}
        response = await self._kv.get(
            kv_pb2.KvGetRequest(
                namespace=self.namespace,
                key=key,
                consistency=CONSISTENCY[consistency],
                min_seq=min_seq,
            ),
            BINDING_CALL_TIMEOUT_S,
        )
        if not response.found:
            return {"value": None, "metadata": None, "seq": 0}
        metadata = json.loads(response.metadata_json) if response.metadata_json else None
        return {"value": _decode(response.value, kind), "metadata": metadata, "seq": response.seq}

    getWithMetadata = get_with_metadata

    async def put(
        self,
        key: str,
        value: str | bytes,
        options: dict[str, Any] | None = None,
        *,
        expiration: int = 0,
        expiration_ttl: int = 0,
        metadata: Any = None,
        expirationTtl: int | None = None,
        only_if_seq: int | None = None,
    ) -> int:
        """Store a value; returns its seq. `only_if_seq` (beyond Cloudflare): write only if
        the key is still at that version (`getWithMetadata(...)["seq"]`; 0 = absent), else
        raise `KvConflictError` and write nothing."""
        if options is not None or expirationTtl is not None:
            given = _options(
                options,
                "put",
                {"expiration", "expirationTtl", "metadata"},
                expirationTtl=expirationTtl,
            )
            expiration = given.get("expiration", expiration)
            expiration_ttl = given.get("expirationTtl", expiration_ttl)
            metadata = given.get("metadata", metadata)
        request = kv_pb2.KvPutRequest(
            namespace=self.namespace,
            key=key,
            value=value.encode() if isinstance(value, str) else value,
            metadata_json=json.dumps(metadata) if metadata is not None else "",
            expiration=expiration,
            expiration_ttl=expiration_ttl,
        )
        if only_if_seq is not None:
            request.if_seq = only_if_seq
        try:
            response = await self._kv.put(request, BINDING_CALL_TIMEOUT_S)
        except EdgeError as error:
            if only_if_seq is not None and error.code == grpc.StatusCode.FAILED_PRECONDITION:
                raise KvConflictError(error.message) from None
            raise
        return int(response.seq)

    async def delete(self, key: str) -> int:
        response = await self._kv.delete(
            kv_pb2.KvDeleteRequest(namespace=self.namespace, key=key), BINDING_CALL_TIMEOUT_S
        )
        return int(response.seq)

    async def list(
        self,
        options: dict[str, Any] | None = None,
        *,
        prefix: str = "",
        limit: int = 1000,
        cursor: str = "",
    ) -> dict[str, Any]:
        if options is not None:
            given = _options(options, "list", {"prefix", "limit", "cursor"})
            prefix = given.get("prefix", prefix) or ""
            limit = given.get("limit", limit)
            cursor = given.get("cursor", cursor) or ""
        response = await self._kv.list(
            kv_pb2.KvListRequest(
                namespace=self.namespace, prefix=prefix, limit=limit, cursor=cursor
            ),
            BINDING_CALL_TIMEOUT_S,
        )
        return {
            "keys": [
                {
                    "name": key.name,
                    "expiration": key.expiration or None,
                    "metadata": json.loads(key.metadata_json) if key.metadata_json else None,
                }
                for key in response.keys
            ],
            "list_complete": response.list_complete,
            "cursor": response.cursor,
        }


class ObjectStub:
    """A handle on one object: `await stub.call("increment", by=2)`, or `stub.increment(by=2)`."""

    def __init__(
        self, binding: ObjectNamespaceBinding, object_id: str, name: str | None = None
    ) -> None:
        self._binding = binding
        self.id = object_id
        self.name = name

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if args and kwargs:
            raise ValueError("pass positional or keyword arguments, not both")
        payload = json.dumps(list(args) if args else kwargs)
        router = self._binding.router
        response = await router.call(
            objects_pb2.ObjectCallRequest(
                namespace=self._binding.namespace, id=self.id, method=method, args_json=payload
            ),
            caller_region=router.region,
            time_remaining=BINDING_CALL_TIMEOUT_S,
        )
        return json.loads(response.result_json, object_hook=JsDict)

    async def fetch(self, request: Request | str, init: dict[str, Any] | None = None) -> Response:
        """Cloudflare's `stub.fetch`: the object's `fetch` handler answers `request`. An
        upgrade (`Upgrade: websocket`) answered 101 gives a Response whose `web_socket`
        carries the object's socket to this PoP."""
        if not isinstance(request, Request):
            init = init or {}
            request = Request(
                str(request),
                method=init.get("method", "GET"),
                headers=init.get("headers"),
                body=init.get("body"),
            )
        if is_upgrade(request.headers):
            return await open_object_socket(self, request)
        router = self._binding.router
        response = await router.call(
            objects_pb2.ObjectCallRequest(
                namespace=self._binding.namespace,
                id=self.id,
                method=FETCH_METHOD,
                args_json=json.dumps([encode_request(request)]),
            ),
            caller_region=router.region,
            time_remaining=BINDING_CALL_TIMEOUT_S,
        )
        return decode_response(response.result_json)

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)

        async def invoke(*args: Any, **kwargs: Any) -> Any:
            return await self.call(method, *args, **kwargs)

        return invoke


async def open_object_socket(stub: ObjectStub, request: Request) -> Response:
    """Open a session that runs the object's `fetch` with an upgrade request; a 101 comes
    back with a `SessionSocket` as its `web_socket`."""
    router = stub._binding.router
    outgoing: asyncio.Queue[objects_pb2.ObjectClientMessage | None] = asyncio.Queue()
    opening = objects_pb2.ObjectOpen(
        namespace=stub._binding.namespace, id=stub.id, fetch_json=encode_request(request)
    )

    async def requests() -> AsyncIterator[objects_pb2.ObjectClientMessage]:
        yield objects_pb2.ObjectClientMessage(open=opening)
        while (message := await outgoing.get()) is not None:
            yield message

    replies = serve_session(router, router.host, requests(), router.region)
    first = await anext(replies)
    response = decode_response(first.opened.response_json)
    if response.status == 101 and first.opened.session_id:
        response.web_socket = SessionSocket(outgoing, replies)
    else:
        await replies.aclose()
    return response


class SessionSocket:
    """The client end of an object's WebSocket, at the PoP holding the connection: what
    is sent here travels to the object over its session (to the owner, wherever it is);
    `events()` yields what the object sends, then the close."""

    def __init__(
        self,
        outgoing: asyncio.Queue[objects_pb2.ObjectClientMessage | None],
        replies: AsyncGenerator[objects_pb2.ObjectServerMessage, None],
    ) -> None:
        self.readyState = WebSocket.OPEN
        self._outgoing = outgoing
        self._replies = replies

    def send(self, message: str | bytes) -> None:
        if self.readyState != WebSocket.OPEN:
            raise RuntimeError("WebSocket send() after close")
        payload = message_payload(message)
        if isinstance(payload, bytes):
            self._outgoing.put_nowait(objects_pb2.ObjectClientMessage(binary=payload))
        else:
            self._outgoing.put_nowait(objects_pb2.ObjectClientMessage(data=payload))

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        check_close(code, reason)
        self.close_unchecked(code, reason)

    def close_unchecked(self, code: int, reason: str, was_clean: bool = True) -> None:
        """Close with any code (the ingress passes on the client's: 1001, 1006 ...)."""
        if self.readyState != WebSocket.OPEN:
            return
        self.readyState = WebSocket.CLOSED
        self._outgoing.put_nowait(
            objects_pb2.ObjectClientMessage(close=objects_pb2.ObjectClose(code=code, reason=reason))
        )
        self._outgoing.put_nowait(None)

    async def events(self) -> AsyncIterator[Event]:
        try:
            async for reply in self._replies:
                kind = reply.WhichOneof("kind")
                if kind == "data":
                    yield MessageEvent(reply.data)
                elif kind == "binary":
                    yield MessageEvent(bytes(reply.binary))
                elif kind == "closed":
                    self.readyState = WebSocket.CLOSED
                    code = reply.closed.code or CLOSE_SERVICE_RESTART
                    yield CloseEvent(code, reply.closed.reason[:CLOSE_REASON_BYTES_MAX])
                    return
        except EdgeError as error:
            reason = error.message.encode()[:CLOSE_REASON_BYTES_MAX].decode(errors="ignore")
            yield CloseEvent(CLOSE_INTERNAL_ERROR, reason, wasClean=False)
            return
        finally:
            self.readyState = WebSocket.CLOSED
            self._outgoing.put_nowait(None)
            await self._replies.aclose()
        yield CloseEvent(CLOSE_ABNORMAL, "", wasClean=False)


class ObjectNamespaceBinding:
    """`env.MY_OBJECTS`: ids and stubs for one Durable Object class namespace."""

    def __init__(self, router: ObjectRouter, namespace: str) -> None:
        self.router = router
        self.namespace = namespace

    def id_from_name(self, name: str) -> str:
        return objectid.id_from_name(self.namespace, name).hex()

    def new_unique_id(self) -> str:
        return objectid.new_unique_id(self.namespace).hex()

    def id_from_string(self, text: str) -> str:
        return objectid.id_from_string(self.namespace, text).hex()

    def get(self, object_id: str | DurableObjectId, options: Any = None) -> ObjectStub:
        """A stub; `options` (Cloudflare's `locationHint`) is accepted: placement is the
        control plane's (nearest to the first caller)."""
        if isinstance(object_id, DurableObjectId):
            return ObjectStub(self, str(object_id), object_id.name)
        return ObjectStub(self, object_id)

    # Cloudflare's names: ids are objects (`toString()`, `name`, `equals`).

    def idFromName(self, name: str) -> DurableObjectId:
        return DurableObjectId(self.id_from_name(name), name)

    def newUniqueId(self, options: Any = None) -> DurableObjectId:
        return DurableObjectId(self.new_unique_id())

    def idFromString(self, text: str) -> DurableObjectId:
        return DurableObjectId(self.id_from_string(text))

    def getByName(self, name: str, options: Any = None) -> ObjectStub:
        return self.get(self.idFromName(name))


class AnalyticsBinding:
    """`env.ANALYTICS.write_data_point(blobs=[...], doubles=[...], indexes=[...])`.

    Exported as metrics: a counter per (dataset, first index, first blob) and the sum of
    the first double. Label values are capped so a worker cannot explode cardinality.
    """

    def __init__(self, metrics: PopMetrics, worker: str, dataset: str) -> None:
        self._metrics = metrics
        self.worker = worker
        self.dataset = dataset
        self._seen: set[tuple[str, str]] = set()

    def write_data_point(
        self,
        blobs: list[str] | None = None,
        doubles: list[float] | None = None,
        indexes: list[str] | None = None,
    ) -> None:
        index = str(indexes[0]) if indexes else ""
        blob = str(blobs[0]) if blobs else ""
        if (index, blob) not in self._seen:
            if len(self._seen) >= ANALYTICS_LABEL_VALUES_MAX:
                index, blob = "other", "other"
            else:
                self._seen.add((index, blob))
        labels = (self._metrics.node, self._metrics.region, self.worker, self.dataset, index, blob)
        self._metrics.analytics_points.labels(*labels).inc()
        if doubles:
            self._metrics.analytics_value.labels(*labels).inc(float(doubles[0]))

    def writeDataPoint(self, point: dict[str, Any] | None = None) -> None:
        """Cloudflare's form: one dict with `blobs`, `doubles` and `indexes`."""
        point = point or {}
        unknown = set(point) - {"blobs", "doubles", "indexes"}
        if unknown:
            raise TypeError(f"writeDataPoint: unknown field(s) {sorted(unknown)}")
        self.write_data_point(point.get("blobs"), point.get("doubles"), point.get("indexes"))


class Env:
    """Attribute access to bindings, like `env.AUTH_CACHE` in a Cloudflare worker."""

    def __init__(self, bindings: dict[str, Any]) -> None:
        self.__dict__.update(bindings)

    def __repr__(self) -> str:
        return f"Env({sorted(self.__dict__)})"


def worker_class_namespace(worker: str, class_name: str) -> str:
    """The object namespace of a class a worker defines: scoped to that worker, so it can
    neither take over a built-in class's objects nor another worker's."""
    return f"{worker}.{class_name}"


def resolve_classes(
    config: WorkerConfig, own_classes: set[str], builtin_classes: set[str]
) -> dict[str, str]:
    """binding -> object namespace: the worker's own class first, else a built-in one."""
    resolved = {}
    for binding, class_name in config.durable_objects.items():
        if class_name in own_classes:
            resolved[binding] = worker_class_namespace(config.name, class_name)
        elif class_name in builtin_classes:
            resolved[binding] = class_name
        else:
            raise BindingError(
                f"durable_objects.{binding}: no class {class_name!r} in worker.py or built in"
            )
    return resolved


class BindingError(ValueError):
    """A binding that names something that does not exist."""


def build_env(
    config: WorkerConfig,
    *,
    kv: KvFrontend,
    router: ObjectRouter,
    metrics: PopMetrics,
    object_namespaces: dict[str, str],
    sql: SqlReplicas | None = None,
) -> Env:
    bindings: dict[str, Any] = {}
    bindings.update(config.vars)
    bindings.update(config.secrets)
    for binding, namespace in config.kv_namespaces.items():
        bindings[binding] = KvBinding(kv, namespace)
    for binding, namespace in object_namespaces.items():
        bindings[binding] = ObjectNamespaceBinding(router, namespace)
    for binding, database in config.d1_databases.items():
        if sql is None:
            raise BindingError(f"d1_databases.{binding}: no SQL databases on this node")
        bindings[binding] = D1Binding(sql, database)
    for binding, dataset in config.analytics.items():
        bindings[binding] = AnalyticsBinding(metrics, config.name, dataset)
    return Env(bindings)
