"""The PoP's KV API: local reads (replica + overlay), writes forwarded to the origin.

Transport-free: the gRPC servicer and the workers' KV bindings both call it, so a
worker's `env.KV.get` behaves exactly like `Pop.KvGet` (consistency modes, limits,
read-your-writes).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from edge.v1 import kv_pb2
from edgepop import kvapi, limits
from edgepop.kvstore import KvStore, Record
from edgepop.requestid import new_request_id
from edgepop.storage import Storage
from pop_node.deadline import answer_budget_s
from pop_node.identity import PopIdentity
from pop_node.kv_cache import CACHE_TTL_S_DEFAULT, Found, ReadCache
from pop_node.overlay import Overlay, newer
from pop_node.upstream import OriginLink, bookmark_wait_s, call_origin

T = TypeVar("T")

# Budget for a call to the origin when the client set no deadline.
UPSTREAM_TIMEOUT_S_DEFAULT = 5.0


def _budget(remaining: float | None) -> float:
    # Answered a little before the client's deadline (pop_node.deadline), so the client
    # sees our status (UNAVAILABLE naming the origin) rather than its own timeout.
    return answer_budget_s(remaining, UPSTREAM_TIMEOUT_S_DEFAULT)


class KvPop(OriginLink, PopIdentity, Protocol):
    """What the KV API uses of its PoP (pop_node.node.PopNode): the replica, the writes
    it made that the stream has not brought back yet, and the origin."""

    @property
    def storage(self) -> Storage: ...

    @property
    def store(self) -> KvStore: ...

    @property
    def overlay(self) -> Overlay: ...

    def remember_write(self, namespace: str, key: str, seq: int, record: Record | None) -> None:
        """Read-your-writes at this PoP until the stream brings the write back."""


class KvFrontend:
    """The PoP's KV API, shared by the gRPC servicer and workers' KV bindings."""

    def __init__(self, pop: KvPop, cached_namespaces: frozenset[str]) -> None:
        self.pop = pop
        self.store = pop.store
        self.overlay = pop.overlay
        # Namespaces in Cloudflare mode (topology `kv_namespaces`), and their read cache.
        self.cached_namespaces = cached_namespaces
        self.read_cache = ReadCache()
        metrics = pop.metrics
        self._cache_hits = metrics.kv_read_cache_requests.labels(
            metrics.node, metrics.region, "hit"
        )
        self._cache_misses = metrics.kv_read_cache_requests.labels(
            metrics.node, metrics.region, "miss"
        )
        metrics.kv_read_cache_entries.set_function(lambda: len(self.read_cache))

    def is_cached(self, namespace: str) -> bool:
        """Whether EVENTUAL reads of `namespace` go through the Cloudflare-mode cache."""
        return namespace in self.cached_namespaces

    # -- upstream --------------------------------------------------------------------------

    async def _upstream(
        self,
        time_remaining: float | None,
        call: Callable[[float], Awaitable[T]],
    ) -> T:
        """Call the origin within the client's deadline (pop_node.upstream)."""
        return await call_origin(call, _budget(time_remaining))

    async def _at_origin(
        self, method: Callable[..., Awaitable[T]], request: Any, time_remaining: float | None
    ) -> T:
        """Answer a read at the origin (STRONG, or a bookmark the replica did not reach)."""
        return await self._upstream(
            time_remaining,
            lambda timeout: method(request, timeout=timeout, metadata=self.pop.node_metadata),
        )

    # -- reads -----------------------------------------------------------------------------

    def _local_get(
        self, txn: object, namespace: str, key: str, encoded: bytes, now: float
    ) -> Record | None:
        record = self.store.get(txn, namespace, encoded, now)
        if self.overlay:  # own writes not yet back from the stream (usually none)
            record = newer(self.overlay.get(namespace, key), record)
            if record is not None and record.expired(now):
                return None
        return record

    async def _consistent_enough(
        self, consistency: int, min_seq: int, time_remaining: float | None
    ) -> bool:
        """True when the local replica may answer; False when the origin must."""
        if consistency == kv_pb2.CONSISTENCY_STRONG:
            return False
        if consistency == kv_pb2.CONSISTENCY_BOOKMARK:
            wait_s = bookmark_wait_s(_budget(time_remaining))
            return await self.pop.replication.wait_applied(min_seq, wait_s)
        return True

    async def get(
        self, request: kv_pb2.KvGetRequest, time_remaining: float | None
    ) -> kv_pb2.KvGetResponse:
        key = kvapi.validate_get(request)
        if request.consistency != kv_pb2.CONSISTENCY_EVENTUAL and not (
            await self._consistent_enough(request.consistency, request.min_seq, time_remaining)
        ):
            return await self._at_origin(self.pop.origin.KvGet, request, time_remaining)
        applied_seq = self.pop.replication.applied_seq
        if request.namespace in self.cached_namespaces:
            found = await self.get_cached(
                request.namespace, request.key, CACHE_TTL_S_DEFAULT, time_remaining
            )
            if found is None:
                return kv_pb2.KvGetResponse(found=False, applied_seq=applied_seq)
            value, metadata_json, expiration = found
            seq = 0  # a cached answer carries no version
        else:
            local = self._read_local(request.namespace, request.key, key)
            if local is None:
                return kv_pb2.KvGetResponse(found=False, applied_seq=applied_seq)
            value, metadata_json, expiration, seq = local
        return kv_pb2.KvGetResponse(
            found=True,
            value=value,
            metadata_json=metadata_json,
            expiration=expiration,
            applied_seq=applied_seq,
            seq=seq,
        )

    def get_eventual(self, namespace: str, key: str) -> tuple[bytes, str, int] | None:
        """`get` at EVENTUAL consistency without protobuf messages, for workers' KV
        bindings (hot, per request): (value, metadata_json, seq), or None when not found."""
        limits.check_namespace(namespace)
        found = self._read_local(namespace, key, limits.check_key(key))
        return None if found is None else (found[0], found[1], found[3])

    async def get_cached(
        self, namespace: str, key: str, cache_ttl_s: int, time_remaining: float | None
    ) -> Found:
        """An EVENTUAL read in Cloudflare mode (pop_node.kv_cache): this PoP's cached
        answer while it lives, else the origin's (paying the delay), kept `cache_ttl_s`."""
        limits.check_namespace(namespace)
        limits.check_key(key)
        cached = self.read_cache.lookup(namespace, key, time.monotonic())
        if cached is not None:
            self._cache_hits.inc()
            found = cached.found
            if found is not None and found[2] and found[2] <= time.time():
                return None  # the key's own expiration passed while cached
            return found
        self._cache_misses.inc()
        response = await self._at_origin(
            self.pop.origin.KvGet,
            kv_pb2.KvGetRequest(
                namespace=namespace, key=key, consistency=kv_pb2.CONSISTENCY_STRONG
            ),
            time_remaining,
        )
        found = (
            (bytes(response.value), response.metadata_json, response.expiration)
            if response.found
            else None
        )
        self.read_cache.store(namespace, key, found, cache_ttl_s, time.monotonic())
        return found

    def _cache_own_write(self, namespace: str, key: str, found: Found) -> None:
        # Cloudflare: a write is visible at once where it was made.
        if namespace in self.cached_namespaces:
            self.read_cache.store(namespace, key, found, CACHE_TTL_S_DEFAULT, time.monotonic())

    def _read_local(
        self, namespace: str, key: str, encoded: bytes
    ) -> tuple[bytes, str, int, int] | None:
        """(value, metadata_json, expiration, seq) of a live key in the replica, this PoP's
        own pending writes included; None when not found."""
        now = time.time()
        txn = self.pop.storage.read_latest()
        if self.overlay:  # own writes pending: the general path
            record = self._local_get(txn, namespace, key, encoded, now)
            if record is None:
                return None
            return record.value, record.metadata_json, record.expiration, record.seq
        # The hot path: one lookup, no Record built, no transaction begun.
        return self.store.get_fields(txn, namespace, encoded, now)

    async def get_many(
        self, request: kv_pb2.KvGetManyRequest, time_remaining: float | None
    ) -> kv_pb2.KvGetManyResponse:
        keys = kvapi.validate_get_many(request)
        if not await self._consistent_enough(request.consistency, request.min_seq, time_remaining):
            return await self._at_origin(self.pop.origin.KvGetMany, request, time_remaining)
        response = kv_pb2.KvGetManyResponse(applied_seq=self.pop.replication.applied_seq)
        results = response.results
        now = time.time()
        namespace = request.namespace
        with self.pop.storage.read() as txn:
            if self.overlay:  # own writes pending: the general path
                for text, key in zip(request.keys, keys, strict=True):
                    record = self._local_get(txn, namespace, text, key, now)
                    if record is None:
                        results.add(key=text, found=False)
                    else:
                        results.add(
                            key=text,
                            found=True,
                            value=record.value,
                            metadata_json=record.metadata_json,
                            expiration=record.expiration,
                        )
                return response
            get_fields = self.store.get_fields
            for text, key in zip(request.keys, keys, strict=True):
                fields = get_fields(txn, namespace, key, now)
                # add() builds the result in place (append() would copy it).
                if fields is None:
                    results.add(key=text, found=False)
                else:
                    value, metadata_json, expiration, _ = fields
                    results.add(
                        key=text,
                        found=True,
                        value=value,
                        metadata_json=metadata_json,
                        expiration=expiration,
                    )
        return response

    async def list(
        self, request: kv_pb2.KvListRequest, time_remaining: float | None
    ) -> kv_pb2.KvListResponse:
        prefix, start_after, limit = kvapi.validate_list(request)
        if not await self._consistent_enough(request.consistency, request.min_seq, time_remaining):
            return await self._at_origin(self.pop.origin.KvList, request, time_remaining)
        now = time.time()
        pending = self.overlay.in_range(request.namespace, request.prefix, start_after)
        tombstones = sum(1 for _, entry in pending if entry.record is None)
        with self.pop.storage.read() as txn:
            records, more = self.store.list_range(
                txn, request.namespace, prefix, start_after, limit + tombstones, now
            )
        merged: dict[bytes, Record | None] = {record.key.encode(): record for record in records}
        boundary = records[-1].key.encode() if more and records else None
        for key, entry in pending:
            if boundary is not None and key > boundary:
                break
            merged[key] = newer(entry, merged.get(key))
        live = [
            record
            for _, record in sorted(merged.items())
            if record is not None and not record.expired(now)
        ]
        if len(live) > limit:
            return kvapi.list_response(live[:limit], True)
        return kvapi.list_response(live, more)

    # -- writes ----------------------------------------------------------------------------

    async def put(
        self, request: kv_pb2.KvPutRequest, time_remaining: float | None
    ) -> kv_pb2.KvPutResponse:
        now = time.time()
        expiration = kvapi.validate_put(request, now)
        forwarded = kv_pb2.KvPutRequest()
        forwarded.CopyFrom(request)
        forwarded.request_id = request.request_id or new_request_id()
        response: kv_pb2.KvPutResponse = await self._upstream(
            time_remaining,
            lambda timeout: self.pop.origin.KvPut(
                forwarded, timeout=timeout, metadata=self.pop.node_metadata
            ),
        )
        record = Record(
            request.namespace, request.key, request.value, request.metadata_json, expiration,
            response.seq,
        )  # fmt: skip
        self.pop.remember_write(request.namespace, request.key, response.seq, record)
        self._cache_own_write(
            request.namespace, request.key, (request.value, request.metadata_json, expiration)
        )
        return response

    async def put_many(
        self, request: kv_pb2.KvPutManyRequest, time_remaining: float | None
    ) -> kv_pb2.KvPutManyResponse:
        expirations = kvapi.validate_put_many(request, time.time())
        forwarded = kv_pb2.KvPutManyRequest()
        forwarded.CopyFrom(request)
        forwarded.request_id = request.request_id or new_request_id()
        response: kv_pb2.KvPutManyResponse = await self._upstream(
            time_remaining,
            lambda timeout: self.pop.origin.KvPutMany(
                forwarded, timeout=timeout, metadata=self.pop.node_metadata
            ),
        )
        first_seq = response.seq - len(request.entries) + 1
        for offset, (entry, expiration) in enumerate(
            zip(request.entries, expirations, strict=True)
        ):
            seq = first_seq + offset
            record = Record(
                request.namespace, entry.key, entry.value, entry.metadata_json, expiration, seq
            )
            self.pop.remember_write(request.namespace, entry.key, seq, record)
            self._cache_own_write(
                request.namespace, entry.key, (entry.value, entry.metadata_json, expiration)
            )
        return response

    async def delete(
        self, request: kv_pb2.KvDeleteRequest, time_remaining: float | None
    ) -> kv_pb2.KvDeleteResponse:
        kvapi.validate_delete(request)
        forwarded = kv_pb2.KvDeleteRequest()
        forwarded.CopyFrom(request)
        forwarded.request_id = request.request_id or new_request_id()
        response: kv_pb2.KvDeleteResponse = await self._upstream(
            time_remaining,
            lambda timeout: self.pop.origin.KvDelete(
                forwarded, timeout=timeout, metadata=self.pop.node_metadata
            ),
        )
        self.pop.remember_write(request.namespace, request.key, response.seq, None)
        self._cache_own_write(request.namespace, request.key, None)
        return response
