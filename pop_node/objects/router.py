"""Routing object calls from any PoP to the owner.

A PoP caches where objects live. A call goes to the cached owner; if that node answers
"not the owner" (the object moved) or cannot be reached (it may be dead: the control
plane moves its objects after its lease lapses), the cache entry is dropped, the
control plane asked again, and the call sent again — until the client's deadline. Every
forwarded call carries a request id, so a call that did run before its reply was lost
is answered from the object's memory of it, never run twice.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections import OrderedDict

import grpc

from edge.v1 import objects_pb2
from edgepop import objectid, retry
from edgepop.errors import DeadlineError, EdgeError, UnavailableError, UpstreamError, reason_of
from edgepop.limits import check_request_id
from edgepop.rpc import node_metadata
from pop_node.deadline import answer_budget_s
from pop_node.objects.host import NotOwnerError, ObjectHost

log = logging.getLogger(__name__)

LOCATION_CACHE_MAX = 100_000
# A call passes at most this many PoPs (entry PoP -> owner); more means a routing loop.
HOPS_MAX = 2
CALL_TIMEOUT_S_DEFAULT = 10.0
FORWARD_TIMEOUT_S = 3.0
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def relocatable(error: BaseException) -> bool:
    """Worth asking where the object lives and trying again: it moved, or its node
    cannot be reached (the control plane moves its objects once its lease lapses)."""
    return isinstance(error, NotOwnerError) or (
        isinstance(error, EdgeError) and error.code in RETRYABLE
    )


class ObjectRouter:
    def __init__(self, host: ObjectHost, node_name: str, region: str, token: str) -> None:
        self.host = host
        self.node_name = node_name
        self.region = region
        self._forward_metadata = node_metadata(node_name, region, token)
        self._cache: OrderedDict[tuple[str, bytes], objects_pb2.LocateObjectResponse] = (
            OrderedDict()
        )
        # Request ids: a random prefix per process and a counter (unique, and far cheaper
        # than a uuid per call).
        self._request_prefix = f"{secrets.token_hex(8)}-"
        self._request_counter = itertools.count()

    def _next_request_id(self) -> str:
        return f"{self._request_prefix}{next(self._request_counter)}"

    async def locate(
        self, namespace: str, object_id: bytes, region: str, hint: str, fresh: bool
    ) -> objects_pb2.LocateObjectResponse:
        """Where the object lives: the cached answer, or (`fresh`) the control plane's."""
        key = (namespace, object_id)
        if not fresh and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        located = await self.host.locate(namespace, object_id, region, hint)
        self._cache[key] = located
        if len(self._cache) > LOCATION_CACHE_MAX:
            self._cache.popitem(last=False)
        return located

    def forget(self, namespace: str, object_id: bytes) -> None:
        self._cache.pop((namespace, object_id), None)

    async def call(
        self,
        request: objects_pb2.ObjectCallRequest,
        *,
        caller_region: str,
        time_remaining: float | None,
    ) -> objects_pb2.ObjectCallResponse:
        namespace = request.namespace
        object_id = objectid.resolve(namespace, request.name, request.id)
        self.host.class_of(namespace)
        check_request_id(request.request_id)
        request_id = request.request_id or self._next_request_id()
        deadline = time.monotonic() + answer_budget_s(time_remaining, CALL_TIMEOUT_S_DEFAULT)
        region = caller_region or self.region
        if request.hops:
            # Sent here as the owner: serve (activating with a fresh answer from the control
            # plane if need be) or say "not the owner" at once; the entry PoP relocates.
            return await self._run_here(request, object_id, region, request_id)
        fresh = False
        # The last unreachable owner: the answer if the deadline comes during a move.
        unreachable: EdgeError | None = None

        def forget() -> None:
            nonlocal fresh
            self.forget(namespace, object_id)
            fresh = True  # our cache was stale, or its node is gone: ask afresh

        async def call_owner() -> objects_pb2.ObjectCallResponse:
            nonlocal unreachable
            try:
                located = await self.locate(
                    namespace, object_id, region, request.location_hint, fresh
                )
                if located.node == self.node_name:
                    return await self._run_here(request, object_id, region, request_id)
                return await self._forward(request, object_id, request_id, located, deadline)
            except EdgeError as error:
                if not isinstance(error, NotOwnerError):
                    unreachable = error
                raise

        try:
            return await retry.relocated(call_owner, deadline, relocatable, forget)
        except NotOwnerError:
            if unreachable is not None:
                raise unreachable from None  # e.g. UNAVAILABLE saying why it cannot serve
            raise DeadlineError("deadline exceeded while finding the object's owner") from None

    async def _run_here(
        self,
        request: objects_pb2.ObjectCallRequest,
        object_id: bytes,
        region: str,
        request_id: str,
    ) -> objects_pb2.ObjectCallResponse:
        result_json, epoch, node = await self.host.call(
            request.namespace,
            object_id,
            request.method,
            request.args_json,
            region=region,
            location_hint=request.location_hint,
            request_id=request_id,
        )
        return objects_pb2.ObjectCallResponse(
            result_json=result_json, node=node or self.node_name, epoch=epoch, id=object_id.hex()
        )

    async def _forward(
        self,
        request: objects_pb2.ObjectCallRequest,
        object_id: bytes,
        request_id: str,
        located: objects_pb2.LocateObjectResponse,
        deadline: float,
    ) -> objects_pb2.ObjectCallResponse:
        forwarded = objects_pb2.ObjectCallRequest()
        forwarded.CopyFrom(request)
        forwarded.name = ""
        forwarded.id = object_id.hex()
        forwarded.request_id = request_id
        forwarded.hops = request.hops + 1
        stub = self.host.stub(located.grpc_address)
        self.host.metrics.do_forwards.inc()
        try:
            response: objects_pb2.ObjectCallResponse = await stub.ObjectCall(
                forwarded,
                metadata=self._forward_metadata,
                # Capped: a cut-off owner must not eat the whole deadline (request ids
                # make the retry against a fresh location safe).
                timeout=max(0.001, min(FORWARD_TIMEOUT_S, deadline - time.monotonic())),
            )
        except grpc.aio.AioRpcError as error:
            code = error.code()
            details = error.details() or ""
            if reason_of(error) == NotOwnerError.reason:
                raise NotOwnerError(located.node, located.epoch) from error
            if code in RETRYABLE:
                raise UnavailableError(f"owner {located.node} unreachable: {code.name}") from error
            raise UpstreamError(code, details) from error
        return response
