"""Requests over one long-lived bidi stream, answered in the order they were sent.

A unary call per request costs both ends a whole gRPC call: call setup, metadata,
status, and with grpc.aio several thread hand-offs. Measured on this 2-core VM, a grpc.aio
ping-pong of 100 bytes: a unary call ~475 µs and ~300 µs of server CPU; a message each way
on an open bidi stream ~220 µs and ~125 µs. Two users: an object's owner sends its
standby every group commit (ObjectReplicate: at one call in flight a hot object pays that
round trip on every call), and every node sends the control plane a heartbeat a second
(HeartbeatStream: 33 of them a second on an idle 32-PoP cluster).

A stream is one ordered channel, so an answer belongs to the oldest request still waiting.
When a request is not answered in time, or the stream fails, nobody knows which of the
requests in flight the server acted on: every waiting request fails (an owner's commit
breaks its instance, as a failed unary call did), the stream is cancelled, and the next
request opens a new one.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import grpc

Request = TypeVar("Request")
Response = TypeVar("Response")

# Opens a new stream to the server (the stub's call, with its metadata and options).
OpenStream = Callable[[], Any]


class Unanswered(Exception):
    """The server did not answer: the stream failed, or the answer was late. Whether it
    acted on the request is unknown."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _not_sent(timeout_s: float) -> Unanswered:
    """A request that never got the stream: not written, so the server never saw it."""
    return Unanswered(f"not sent within {timeout_s:g} s: the stream was busy")


class _Stream(Generic[Response]):
    """One open stream: its call, the requests awaiting an answer, and the reader."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.waiting: collections.deque[asyncio.Future[Response]] = collections.deque()
        self.failure: str | None = None
        self.reader: asyncio.Task[None] | None = None

    def fail(self, reason: str) -> None:
        """End this stream: every waiting request fails with `reason`."""
        if self.failure is not None:
            return
        self.failure = reason
        self.call.cancel()
        while self.waiting:
            answer = self.waiting.popleft()
            if not answer.done():
                answer.set_exception(Unanswered(reason))


class OrderedStream(Generic[Request, Response]):
    """Requests to one server over one stream, each answered in order."""

    def __init__(
        self, address: str, open_stream: OpenStream, *, waits_for_ready: bool = False
    ) -> None:
        """`waits_for_ready`: `open_stream` opens the call with wait_for_ready. grpc.aio's
        write on such a call waits for the channel, and cancelling the call does not end
        that wait (a request sent while the server is down would hold the stream's write
        lock for good): each write is then bounded by its request's timeout."""
        self.address = address
        self._open_stream = open_stream
        self._waits_for_ready = waits_for_ready
        self._stream: _Stream[Response] | None = None
        # A stream takes one write at a time, and answers come in the order of writes.
        self._write_lock = asyncio.Lock()
        # Sends that hold the write lock or wait for it.
        self._senders = 0

    async def send(self, request: Request, timeout_s: float) -> Response:
        """Send `request`; its answer, or Unanswered after `timeout_s` (counted from now,
        so a request queued behind another one's write gets no more than its own)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        await self._take_turn(timeout_s)
        answer: asyncio.Future[Response] = loop.create_future()
        try:
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                raise _not_sent(timeout_s)
            stream = self._current()
            stream.waiting.append(answer)
            timer = loop.call_later(remaining_s, _late, stream, answer, timeout_s)
            try:
                if self._waits_for_ready:
                    await asyncio.wait_for(stream.call.write(request), remaining_s)
                else:
                    await stream.call.write(request)
            except TimeoutError:
                stream.fail(f"no answer within {timeout_s:g} s")
            except asyncio.CancelledError:
                # Written or not, the order of answers is no longer known. grpc raises
                # this too when the call was cancelled under the write (a failed stream).
                stream.fail("a request was cancelled while it was being sent")
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    timer.cancel()
                    raise
            except Exception as error:  # the call failed, or had ended
                stream.fail(_reason(error))
        finally:
            self._senders -= 1
            self._write_lock.release()
        try:
            return await answer
        finally:
            timer.cancel()

    async def _take_turn(self, timeout_s: float) -> None:
        """Take the write lock, or raise Unanswered (never written: the stream and the
        requests on it are untouched) if that takes longer than `timeout_s`."""
        self._senders += 1
        if self._senders == 1:
            # Nobody holds the lock or waits for it: taken at once. No timer: a timeout
            # scope costs the hot path (a standby copy per group commit) tens of µs.
            await self._write_lock.acquire()
            return
        try:
            async with asyncio.timeout(timeout_s):
                await self._write_lock.acquire()
        except BaseException as error:
            self._senders -= 1
            if isinstance(error, TimeoutError):
                raise _not_sent(timeout_s) from None
            raise

    def close(self) -> None:
        if self._stream is not None:
            self._stream.fail("node shutting down")
            if self._stream.reader is not None:
                self._stream.reader.cancel()
            self._stream = None

    def _current(self) -> _Stream[Response]:
        stream = self._stream
        if stream is None or stream.failure is not None:
            stream = self._stream = _Stream[Response](self._open_stream())
            stream.reader = asyncio.ensure_future(self._read(stream))
        return stream

    async def _read(self, stream: _Stream[Response]) -> None:
        reason = "the server ended the stream"
        try:
            while True:
                response = await stream.call.read()
                if response is grpc.aio.EOF:
                    break
                if not stream.waiting:
                    reason = "the server answered a request that was not sent"
                    break
                answer = stream.waiting.popleft()
                if not answer.done():
                    answer.set_result(response)
        except grpc.aio.AioRpcError as error:
            reason = _reason(error)
        except asyncio.CancelledError:
            reason = "stream closed"
            raise
        finally:
            stream.fail(reason)


def _late(stream: _Stream[Any], answer: asyncio.Future[Any], timeout_s: float) -> None:
    if not answer.done():
        stream.fail(f"no answer within {timeout_s:g} s")


def _reason(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return str(error.code().name)
    return f"{type(error).__name__}: {error}"
