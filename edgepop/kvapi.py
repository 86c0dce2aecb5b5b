"""The KV API shared by Pop and Origin: request validation and response building.

Both services validate every request where it enters (a PoP before forwarding, the
origin again because clients may call it directly); nothing is written before a request
has passed every check.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from edge.v1 import kv_pb2
from edgepop import limits
from edgepop.errors import InvalidArgumentError
from edgepop.kvstore import Record, decode_cursor, encode_cursor

# Chunks of dumps and snapshots stay well under the gRPC message limit.
CHUNK_RECORDS_MAX = 1000
CHUNK_BYTES_MAX = 4 * 1024 * 1024


def validate_get(request: kv_pb2.KvGetRequest) -> bytes:
    limits.check_namespace(request.namespace)
    return limits.check_key(request.key)


def validate_get_many(request: kv_pb2.KvGetManyRequest) -> list[bytes]:
    limits.check_namespace(request.namespace)
    limits.check_get_many(len(request.keys))
    return [limits.check_key(key) for key in request.keys]


def validate_list(request: kv_pb2.KvListRequest) -> tuple[bytes, bytes | None, int]:
    """(prefix, start_after, limit) of a list request."""
    limits.check_namespace(request.namespace)
    limit = limits.list_limit(request.limit)
    prefix = request.prefix.encode()
    if len(prefix) > limits.KEY_BYTES_MAX:
        raise InvalidArgumentError(
            f"prefix is {len(prefix)} bytes; the limit is {limits.KEY_BYTES_MAX} bytes"
        )
    start_after = decode_cursor(request.cursor) if request.cursor else None
    return prefix, start_after, limit


def validate_put(request: kv_pb2.KvPutRequest, now: float) -> int:
    """Check a put; returns its absolute expiration."""
    limits.check_namespace(request.namespace)
    limits.check_key(request.key)
    limits.check_value(request.value)
    limits.check_metadata(request.metadata_json)
    limits.check_request_id(request.request_id)
    return limits.resolve_expiration(request.expiration, request.expiration_ttl, now)


def validate_put_many(request: kv_pb2.KvPutManyRequest, now: float) -> list[int]:
    """Check every entry; returns their absolute expirations."""
    limits.check_namespace(request.namespace)
    limits.check_put_many(len(request.entries))
    limits.check_request_id(request.request_id)
    expirations = []
    for index, entry in enumerate(request.entries):
        try:
            limits.check_key(entry.key)
            limits.check_value(entry.value)
            limits.check_metadata(entry.metadata_json)
            expirations.append(
                limits.resolve_expiration(entry.expiration, entry.expiration_ttl, now)
            )
        except InvalidArgumentError as error:
            raise type(error)(f"entries[{index}]: {error.message}") from error
    return expirations


def validate_delete(request: kv_pb2.KvDeleteRequest) -> None:
    limits.check_namespace(request.namespace)
    limits.check_key(request.key)
    limits.check_request_id(request.request_id)


def get_response(record: Record | None, applied_seq: int) -> kv_pb2.KvGetResponse:
    if record is None:
        return kv_pb2.KvGetResponse(found=False, applied_seq=applied_seq)
    return kv_pb2.KvGetResponse(
        found=True,
        value=record.value,
        metadata_json=record.metadata_json,
        expiration=record.expiration,
        applied_seq=applied_seq,
        seq=record.seq,
    )


def get_many_result(key: str, record: Record | None) -> kv_pb2.KvGetManyResult:
    if record is None:
        return kv_pb2.KvGetManyResult(key=key, found=False)
    return kv_pb2.KvGetManyResult(
        key=key,
        found=True,
        value=record.value,
        metadata_json=record.metadata_json,
        expiration=record.expiration,
    )


def list_response(records: list[Record], more: bool) -> kv_pb2.KvListResponse:
    response = kv_pb2.KvListResponse(list_complete=not more)
    response.keys.extend(
        kv_pb2.KvListKey(
            name=record.key, expiration=record.expiration, metadata_json=record.metadata_json
        )
        for record in records
    )
    if more and records:
        response.cursor = encode_cursor(records[-1].key.encode())
    return response


def chunked(records: Iterable[Record]) -> Iterator[list[Record]]:
    """Group records into chunks bounded by count and bytes (one big value goes alone)."""
    chunk: list[Record] = []
    size = 0
    for record in records:
        record_size = len(record.value) + len(record.key) + len(record.metadata_json) + 64
        if chunk and (len(chunk) >= CHUNK_RECORDS_MAX or size + record_size > CHUNK_BYTES_MAX):
            yield chunk
            chunk, size = [], 0
        chunk.append(record)
        size += record_size
    if chunk:
        yield chunk


def dump_chunks(records: Iterable[Record], seq: int) -> Iterator[kv_pb2.DumpChunk]:
    """A whole store as DumpChunks (at least one, so the seq always arrives)."""
    sent = False
    for chunk in chunked(records):
        sent = True
        yield kv_pb2.DumpChunk(records=[record.to_pb() for record in chunk], seq=seq)
    if not sent:
        yield kv_pb2.DumpChunk(seq=seq)
