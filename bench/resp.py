"""A minimal Redis (RESP2) client on asyncio streams, enough for the replication baseline.

redis-py is not a dependency of the project, and the benchmark needs only a few
commands (PING, INFO, SET, SUBSCRIBE), pipelined writes and a fast reader for pub/sub
pushes; `parse` is a pure function so it can be unit-tested on partial buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

CRLF = b"\r\n"


class RespError(Exception):
    """An error reply (`-ERR ...`) from Redis."""


class Incomplete(Exception):
    """The buffer ends before the value does; read more and parse again."""


def encode(*parts: bytes | str | int) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        if isinstance(part, int):
            part = str(part)
        data = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def parse(buffer: bytes | bytearray, position: int = 0) -> tuple[Any, int]:
    """Decode one RESP value at `position`; returns (value, position after it).

    Simple strings and bulk strings come back as bytes, integers as int, arrays as
    lists, nil as None, and error replies as `RespError` instances (not raised, so a
    pipelined reader keeps its place). Raises `Incomplete` when more bytes are needed.
    """
    end = buffer.find(CRLF, position)
    if end < 0:
        raise Incomplete
    kind = buffer[position : position + 1]
    header = bytes(buffer[position + 1 : end])
    after = end + 2
    if kind == b"+":
        return header, after
    if kind == b"-":
        return RespError(header.decode(errors="replace")), after
    if kind == b":":
        return int(header), after
    if kind == b"$":
        length = int(header)
        if length < 0:
            return None, after
        if len(buffer) < after + length + 2:
            raise Incomplete
        return bytes(buffer[after : after + length]), after + length + 2
    if kind == b"*":
        count = int(header)
        if count < 0:
            return None, after
        items = []
        for _ in range(count):
            item, after = parse(buffer, after)
            items.append(item)
        return items, after
    raise ValueError(f"not RESP at byte {position}: {bytes(buffer[position : position + 20])!r}")


def parse_all(buffer: bytearray) -> list[Any]:
    """Every complete value at the start of `buffer`; consumed bytes are removed from it."""
    values = []
    position = 0
    while position < len(buffer):
        try:
            value, position_after = parse(buffer, position)
        except Incomplete:
            break
        values.append(value)
        position = position_after
    del buffer[:position]
    return values


class RespConnection:
    """One connection; `command` for request/response, raw `send`/`read_values` for speed."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._buffer = bytearray()
        self._pending: list[Any] = []

    @classmethod
    async def open(cls, host: str, port: int, timeout: float = 5.0) -> RespConnection:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        return cls(reader, writer)

    async def read_values(self) -> list[Any]:
        """At least one value (waits for the socket); every complete one buffered so far."""
        while True:
            if self._pending:
                values, self._pending = self._pending, []
                return values
            chunk = await self.reader.read(1 << 16)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self._buffer += chunk
            self._pending = parse_all(self._buffer)

    async def command(self, *parts: bytes | str | int, timeout: float = 5.0) -> Any:
        self.writer.write(encode(*parts))
        await self.writer.drain()
        while not self._pending:
            await asyncio.wait_for(self._fill(), timeout)
        value = self._pending.pop(0)
        if isinstance(value, RespError):
            raise value
        return value

    async def _fill(self) -> None:
        chunk = await self.reader.read(1 << 16)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        self._buffer += chunk
        self._pending.extend(parse_all(self._buffer))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


def info_fields(text: bytes) -> dict[str, str]:
    """`INFO` output as a dict (section headers and blank lines dropped)."""
    fields = {}
    for line in text.decode(errors="replace").splitlines():
        if line and not line.startswith("#") and ":" in line:
            name, _, value = line.partition(":")
            fields[name] = value
    return fields
