"""Object sessions (`ObjectConnect`): a client attached to an object through any PoP.

On the owner, a session is a channel of the instance: connect, each message and close
reach the object through the input gate (one order with calls), and what the object
sends is released through the output gate. Elsewhere the PoP proxies the stream to the
owner, asking the control plane again while the owner refuses (the object moved). When
the instance stops (lease lapsed, object moved) the session ends with `closed`: the
client reconnects and the object (e.g. DocumentSession) replays what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from edge.v1 import objects_pb2, pop_pb2_grpc
from edgepop import objectid
from edgepop.errors import DeadlineError, EdgeError, InvalidArgumentError, UnavailableError
from pop_node.objects.host import NotOwnerError, ObjectHost
from pop_node.objects.instance import ObjectInstance, RemoteError, SessionChannel
from pop_node.objects.router import RETRY_BACKOFF_S, ObjectRouter

log = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 10.0


async def serve_session(
    router: ObjectRouter,
    host: ObjectHost,
    requests: AsyncIterator[objects_pb2.ObjectClientMessage],
    caller_region: str,
) -> AsyncIterator[objects_pb2.ObjectServerMessage]:
    first = await anext(aiter(requests), None)
    if first is None or not first.HasField("open"):
        raise InvalidArgumentError("the first session message must be `open`")
    opening = first.open
    object_id = objectid.resolve(opening.namespace, opening.name, opening.id)
    host.class_of(opening.namespace)
    region = caller_region or host.region
    if opening.hops:
        # Proxied here as the owner: serve, or fail at once (the entry PoP relocates).
        instance = await host.instance(opening.namespace, object_id, region, opening.location_hint)
        async for message in _local(instance, requests):
            yield message
        return
    deadline = time.monotonic() + OPEN_TIMEOUT_S
    attempt = 0
    fresh = False
    while True:
        try:
            located = await router._locate(
                opening.namespace, object_id, region, opening.location_hint, fresh
            )
            if located.node == host.node_name:
                instance = await host.instance(
                    opening.namespace, object_id, region, opening.location_hint
                )
                async for message in _local(instance, requests):
                    yield message
                return
            proxied = _proxy(router, host, located, opening, object_id, requests)
            reply = await anext(proxied)
            yield reply
            async for message in proxied:
                yield message
            return
        except NotOwnerError:
            pass
        except EdgeError as error:
            if error.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
        router.forget(opening.namespace, object_id)
        fresh = True
        backoff = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
        attempt += 1
        if time.monotonic() + backoff >= deadline:
            raise DeadlineError("could not reach the object's owner to open a session")
        await asyncio.sleep(backoff)


async def _local(
    instance: ObjectInstance, requests: AsyncIterator[objects_pb2.ObjectClientMessage]
) -> AsyncIterator[objects_pb2.ObjectServerMessage]:
    session = instance.open_session()
    try:
        await instance.execute(lambda: instance.obj.on_connect(session))
    except BaseException:
        session.close("connect failed")
        raise
    yield objects_pb2.ObjectServerMessage(
        opened=objects_pb2.ObjectOpened(
            node=instance.host.node_name,
            epoch=instance.epoch,
            id=instance.object_id.hex(),
            session_id=session.id,
        )
    )

    async def pump() -> None:
        try:
            async for message in requests:
                if not message.HasField("data"):
                    continue
                try:
                    await instance.execute(_deliver(instance, session, message.data))
                except RemoteError as error:
                    log.warning("on_message raised in %s: %s", instance.namespace, error.message)
        except (EdgeError, grpc.aio.AioRpcError, asyncio.CancelledError) as error:
            session.close(f"session ended: {error}")
            return
        if not instance.broken:
            with contextlib.suppress(EdgeError):
                await instance.execute(lambda: instance.obj.on_close(session))
        session.close("client disconnected")

    reader = asyncio.ensure_future(pump())
    try:
        async for data in instance.session_messages(session):
            yield objects_pb2.ObjectServerMessage(data=data)
        yield objects_pb2.ObjectServerMessage(
            closed=objects_pb2.ObjectClosed(reason=session.closed_reason or "closed")
        )
    finally:
        reader.cancel()
        session.close("session ended")


def _deliver(
    instance: ObjectInstance, session: SessionChannel, data: str
) -> Callable[[], Awaitable[None]]:
    return lambda: instance.obj.on_message(session, data)


async def _proxy(
    router: ObjectRouter,
    host: ObjectHost,
    located: objects_pb2.LocateObjectResponse,
    opening: objects_pb2.ObjectOpen,
    object_id: bytes,
    requests: AsyncIterator[objects_pb2.ObjectClientMessage],
) -> AsyncIterator[objects_pb2.ObjectServerMessage]:
    stub = pop_pb2_grpc.PopStub(host.channel(located.grpc_address))
    call = stub.ObjectConnect(metadata=router._forward_metadata)
    forwarded = objects_pb2.ObjectOpen()
    forwarded.CopyFrom(opening)
    forwarded.name = ""
    forwarded.id = object_id.hex()
    forwarded.hops = opening.hops + 1
    try:
        await call.write(objects_pb2.ObjectClientMessage(open=forwarded))
        first = await call.read()
    except grpc.aio.AioRpcError as error:
        call.cancel()
        details = error.details() or ""
        if error.code() == grpc.StatusCode.FAILED_PRECONDITION and NotOwnerError.marker in details:
            raise NotOwnerError(located.node, located.epoch) from error
        raise UnavailableError(f"owner {located.node}: {error.code().name} {details}") from error
    if first is grpc.aio.EOF:
        raise UnavailableError(f"owner {located.node} closed the session at once")
    yield first

    async def pump() -> None:
        try:
            async for message in requests:
                await call.write(message)
            await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass

    writer = asyncio.ensure_future(pump())
    try:
        while True:
            try:
                message = await call.read()
            except grpc.aio.AioRpcError as error:
                yield objects_pb2.ObjectServerMessage(
                    closed=objects_pb2.ObjectClosed(reason=f"owner lost: {error.code().name}")
                )
                return
            if message is grpc.aio.EOF:
                return
            yield message
    finally:
        writer.cancel()
        call.cancel()
