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
import functools
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

import grpc

from edge.v1 import objects_pb2
from edgepop import objectid, retry
from edgepop.errors import (
    DeadlineError,
    EdgeError,
    InvalidArgumentError,
    UnavailableError,
    UnimplementedError,
    reason_of,
)
from edgepop.websocket import (
    CLOSE_ABNORMAL,
    CLOSE_NO_STATUS,
    CLOSE_NORMAL,
    CLOSE_SERVICE_RESTART,
    CloseEvent,
    MessageEvent,
    WebSocket,
)
from edgepop.worker_api import Response
from pop_node.objects.fetch import decode_request, encode_response, run_fetch
from pop_node.objects.host import NotOwnerError, ObjectHost
from pop_node.objects.instance import ObjectInstance, RemoteError, SessionChannel
from pop_node.objects.router import ObjectRouter, relocatable

log = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 10.0
# Close notices still being delivered after their stream went away (kept referenced).
_CLOSING: set[asyncio.Task[None]] = set()
UNACCEPTED_SOCKET = (
    "the object returned a WebSocket it did not accept (ctx.acceptWebSocket or accept())"
)


async def serve_session(
    router: ObjectRouter,
    host: ObjectHost,
    requests: AsyncIterator[objects_pb2.ObjectClientMessage],
    caller_region: str,
) -> AsyncGenerator[objects_pb2.ObjectServerMessage, None]:
    first = await anext(aiter(requests), None)
    if first is None or not first.HasField("open"):
        raise InvalidArgumentError("the first session message must be `open`")
    opening = first.open
    object_id = objectid.resolve(opening.namespace, opening.name, opening.id)
    cls = host.class_of(opening.namespace)
    if opening.fetch_json and not callable(getattr(cls, "fetch", None)):
        raise UnimplementedError(f"{opening.namespace} has no fetch handler")
    region = caller_region or host.region
    if opening.hops:
        # Proxied here as the owner: serve, or fail at once (the entry PoP relocates).
        instance = await host.instance(opening.namespace, object_id, region, opening.location_hint)
        async for message in _serve_here(instance, opening, requests):
            yield message
        return
    deadline = time.monotonic() + OPEN_TIMEOUT_S
    fresh = False

    def forget() -> None:
        nonlocal fresh
        router.forget(opening.namespace, object_id)
        fresh = True

    # Opening is retried (the object moved, its owner is unreachable); once the client
    # has its first message the session is under way, and its end is `closed`.
    served: AsyncIterator[objects_pb2.ObjectServerMessage] | None = None
    reply: objects_pb2.ObjectServerMessage | None = None
    try:
        async for attempt in retry.relocating(deadline, relocatable, forget):
            with attempt:
                located = await router.locate(
                    opening.namespace, object_id, region, opening.location_hint, fresh
                )
                if located.node == host.node_name:
                    instance = await host.instance(
                        opening.namespace, object_id, region, opening.location_hint
                    )
                    served = _serve_here(instance, opening, requests)
                else:
                    served = _proxy(router, host, located, opening, object_id, requests)
                reply = await anext(served, None)
    except EdgeError as error:
        if relocatable(error):
            raise DeadlineError("could not reach the object's owner to open a session") from error
        raise
    if served is None or reply is None:
        return
    yield reply
    async for message in served:
        yield message


def _serve_here(
    instance: ObjectInstance,
    opening: objects_pb2.ObjectOpen,
    requests: AsyncIterator[objects_pb2.ObjectClientMessage],
) -> AsyncIterator[objects_pb2.ObjectServerMessage]:
    if opening.fetch_json:
        return _local_websocket(instance, opening.fetch_json, requests)
    return _local(instance, requests)


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


async def _local_websocket(
    instance: ObjectInstance,
    fetch_json: str,
    requests: AsyncIterator[objects_pb2.ObjectClientMessage],
) -> AsyncIterator[objects_pb2.ObjectServerMessage]:
    """Cloudflare's WebSocket through a stub: run the object's `fetch`; if it answers 101
    with a socket it accepted, carry that socket's frames over this session.

    Frames from the client reach the object through the input gate (`webSocketMessage`
    for a socket given to `ctx.acceptWebSocket`, else the socket's listeners); what the
    object sends leaves through the output gate, like a session's messages.
    """
    request = decode_request(fetch_json)
    answered: list[Response] = []
    result_json, epoch, _ = await instance.execute(
        lambda: run_fetch(instance.obj, request, upgrade=True, answered=answered)
    )
    opened = objects_pb2.ObjectOpened(
        node=instance.host.node_name,
        epoch=epoch,
        id=instance.object_id.hex(),
        response_json=result_json,
    )
    response = answered[0]
    client = response.web_socket
    if response.status != 101 or client is None:
        yield objects_pb2.ObjectServerMessage(opened=opened)
        return
    server = client.peer if isinstance(client, WebSocket) else None
    if server is None or not (server in instance.websockets or server.accepted):
        # Cloudflare refuses a socket nobody will serve; so does edgepop.
        refusal = await encode_response(Response(UNACCEPTED_SOCKET, status=500))
        opened.response_json = json.dumps(refusal)
        yield objects_pb2.ObjectServerMessage(opened=opened)
        return
    session = instance.open_session()
    opened.session_id = session.id
    # The object's sends, released through the output gate.
    client.attach(
        lambda event: session.send(event.data if isinstance(event, MessageEvent) else event)
    )
    yield objects_pb2.ObjectServerMessage(opened=opened)
    reader = asyncio.ensure_future(_websocket_frames(instance, session, server, requests))
    try:
        async for item in instance.session_messages(session):
            if isinstance(item, CloseEvent):
                # The object closed its end: tell the client, and end the session.
                yield objects_pb2.ObjectServerMessage(
                    closed=objects_pb2.ObjectClosed(reason=item.reason, code=item.code)
                )
                return
            if isinstance(item, bytes):
                yield objects_pb2.ObjectServerMessage(binary=item)
            else:
                yield objects_pb2.ObjectServerMessage(data=item)
        code = CLOSE_SERVICE_RESTART if instance.broken else CLOSE_NORMAL
        yield objects_pb2.ObjectServerMessage(
            closed=objects_pb2.ObjectClosed(reason=session.closed_reason[:120], code=code)
        )
    finally:
        reader.cancel()
        session.close("session ended")
        server.readyState = WebSocket.CLOSED
        instance.websockets.pop(server, None)


async def _websocket_frames(
    instance: ObjectInstance,
    session: SessionChannel,
    server: WebSocket,
    requests: AsyncIterator[objects_pb2.ObjectClientMessage],
) -> None:
    """The client's frames, each an event of the object, until the client closes."""
    closing = CloseEvent(CLOSE_ABNORMAL, "connection lost", wasClean=False)
    try:
        async for message in requests:
            kind = message.WhichOneof("kind")
            if kind == "close":
                closing = CloseEvent(message.close.code or CLOSE_NO_STATUS, message.close.reason)
                break
            if kind not in ("data", "binary"):
                continue
            payload: str | bytes = message.data if kind == "data" else bytes(message.binary)
            auto = instance.auto_response
            if auto is not None and payload == auto.request and server.readyState == WebSocket.OPEN:
                # Answered by the runtime, without waking the object (Cloudflare's
                # setWebSocketAutoResponse).
                server.send(auto.response)
                server.auto_response_at_ms = int(time.time() * 1000)
                continue
            try:
                await instance.execute(
                    functools.partial(_websocket_event, instance, server, payload)
                )
            except RemoteError as error:
                log.warning("webSocketMessage raised in %s: %s", instance.namespace, error.message)
    except (EdgeError, grpc.aio.AioRpcError):
        pass
    except asyncio.CancelledError:
        # The stream went away under us: the object still hears of the close.
        task = asyncio.ensure_future(_websocket_closed(instance, session, server, closing))
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)
        raise
    await _websocket_closed(instance, session, server, closing)


async def _websocket_event(
    instance: ObjectInstance, server: WebSocket, event: str | bytes | CloseEvent
) -> None:
    """One client event at the object: a hibernatable socket's handler, else listeners."""
    obj = instance.obj
    hibernatable = server in instance.websockets
    if isinstance(event, CloseEvent):
        if not hibernatable:
            await server.deliver(event)
            return
        handler = getattr(obj, "webSocketClose", None)
        if handler is not None:
            await handler(server, event.code, event.reason, event.wasClean)
        return
    if hibernatable:
        handler = getattr(obj, "webSocketMessage", None)
        if handler is not None:
            await handler(server, event)
    else:
        await server.deliver(MessageEvent(event))


async def _websocket_closed(
    instance: ObjectInstance, session: SessionChannel, server: WebSocket, closing: CloseEvent
) -> None:
    server.readyState = WebSocket.CLOSED
    if not instance.broken:
        with contextlib.suppress(EdgeError):
            await instance.execute(lambda: _websocket_event(instance, server, closing))
    instance.websockets.pop(server, None)
    session.close("client closed the WebSocket")


async def _proxy(
    router: ObjectRouter,
    host: ObjectHost,
    located: objects_pb2.LocateObjectResponse,
    opening: objects_pb2.ObjectOpen,
    object_id: bytes,
    requests: AsyncIterator[objects_pb2.ObjectClientMessage],
) -> AsyncIterator[objects_pb2.ObjectServerMessage]:
    stub = host.stub(located.grpc_address)
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
        if reason_of(error) == NotOwnerError.reason:
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
