"""Named limits of the KV API and the checks that enforce them where a request enters.

Every check raises an InvalidArgumentError subclass whose message names the limit, so
a client can tell which one it crossed. Nothing is written before all checks pass.
"""

from __future__ import annotations

import json
import re

from edgepop.errors import (
    InvalidArgumentError,
    KeyTooLargeError,
    MetadataInvalidError,
    ValueTooLargeError,
)

KEY_BYTES_MAX = 512
VALUE_BYTES_MAX = 25 * 1024 * 1024
METADATA_BYTES_MAX = 1024
NAMESPACE_BYTES_MAX = 64
EXPIRATION_TTL_S_MIN = 1
GET_MANY_KEYS_MAX = 100
PUT_MANY_ENTRIES_MAX = 10_000
LIST_LIMIT_MAX = 1000
REQUEST_ID_BYTES_MAX = 64
# 9999-12-31T23:59:59Z: any later expiration is a client bug (and would overflow int64).
EXPIRATION_MAX = 253_402_300_799
# Calls one node serves at once (unary and streams): more are refused with
# RESOURCE_EXHAUSTED. 1,000 writes/s acknowledged within 10 s stay under it.
CALLS_IN_FLIGHT_MAX = 10_000
# gRPC message limit: a 25 MiB value plus framing, or a large KvPutMany.
MESSAGE_BYTES_MAX = 64 * 1024 * 1024

_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_.\-]+")


# Namespaces already found valid (a deployment has a handful; every read checks one).
_VALID_NAMESPACES: set[str] = set()
_VALID_NAMESPACES_MAX = 4096


def check_namespace(namespace: str) -> None:
    if namespace in _VALID_NAMESPACES:
        return
    size = len(namespace.encode("utf-8"))
    if size == 0 or size > NAMESPACE_BYTES_MAX or not _NAMESPACE_RE.fullmatch(namespace):
        raise InvalidArgumentError(
            f"namespace must be 1-{NAMESPACE_BYTES_MAX} bytes of [A-Za-z0-9_.-] (got {size} bytes)"
        )
    if len(_VALID_NAMESPACES) < _VALID_NAMESPACES_MAX:
        _VALID_NAMESPACES.add(namespace)


def check_key(key: str) -> bytes:
    """Validate a key and return its UTF-8 encoding."""
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidArgumentError("key must be valid UTF-8") from error
    if len(encoded) == 0:
        raise InvalidArgumentError("key must not be empty")
    if len(encoded) > KEY_BYTES_MAX:
        raise KeyTooLargeError(
            f"key is {len(encoded)} bytes; the limit is {KEY_BYTES_MAX} bytes (KEY_BYTES_MAX)"
        )
    if key in (".", ".."):
        raise InvalidArgumentError('key must not be "." or ".."')
    return encoded


def check_value(value: bytes) -> None:
    if len(value) > VALUE_BYTES_MAX:
        raise ValueTooLargeError(
            f"value is {len(value)} bytes; the limit is {VALUE_BYTES_MAX} bytes"
            " (VALUE_BYTES_MAX, 25 MiB)"
        )


def check_metadata(metadata_json: str) -> None:
    if not metadata_json:
        return
    size = len(metadata_json.encode("utf-8"))
    if size > METADATA_BYTES_MAX:
        raise MetadataInvalidError(
            f"metadata is {size} bytes; the limit is {METADATA_BYTES_MAX} bytes"
            " (METADATA_BYTES_MAX)"
        )
    try:
        json.loads(metadata_json, parse_constant=_reject_constant)
    except ValueError as error:
        raise MetadataInvalidError(f"metadata must be valid JSON: {error}") from error


def _reject_constant(name: str) -> object:
    # json accepts NaN and Infinity, which RFC 8259 JSON does not.
    raise ValueError(f"{name} is not JSON")


def resolve_expiration(expiration: int, expiration_ttl: int, now: float) -> int:
    """The absolute expiration (unix seconds, 0 = never) of a put, TTL winning."""
    if expiration_ttl < 0 or expiration < 0:
        raise InvalidArgumentError("expiration and expiration_ttl must not be negative")
    if expiration_ttl:
        if expiration_ttl < EXPIRATION_TTL_S_MIN:
            raise InvalidArgumentError(
                f"expiration_ttl must be at least {EXPIRATION_TTL_S_MIN} s (EXPIRATION_TTL_S_MIN)"
            )
        if int(now) + expiration_ttl > EXPIRATION_MAX:
            raise InvalidArgumentError(
                f"expiration_ttl reaches past {EXPIRATION_MAX} (EXPIRATION_MAX, year 9999)"
            )
        return int(now) + expiration_ttl
    if expiration > EXPIRATION_MAX:
        raise InvalidArgumentError(
            f"expiration is past {EXPIRATION_MAX} (EXPIRATION_MAX, year 9999)"
        )
    if expiration and expiration <= now:
        raise InvalidArgumentError(
            f"expiration {expiration} is not in the future (now is {int(now)})"
        )
    return expiration


def check_request_id(request_id: str) -> None:
    if len(request_id.encode("utf-8")) > REQUEST_ID_BYTES_MAX:
        raise InvalidArgumentError(
            f"request_id must be at most {REQUEST_ID_BYTES_MAX} bytes (REQUEST_ID_BYTES_MAX)"
        )


def check_get_many(keys_count: int) -> None:
    if keys_count == 0 or keys_count > GET_MANY_KEYS_MAX:
        raise InvalidArgumentError(
            f"KvGetMany takes 1-{GET_MANY_KEYS_MAX} keys (GET_MANY_KEYS_MAX); got {keys_count}"
        )


def check_put_many(entries_count: int) -> None:
    if entries_count == 0 or entries_count > PUT_MANY_ENTRIES_MAX:
        raise InvalidArgumentError(
            f"KvPutMany takes 1-{PUT_MANY_ENTRIES_MAX} entries (PUT_MANY_ENTRIES_MAX);"
            f" got {entries_count}"
        )


def list_limit(limit: int) -> int:
    """The effective page size of a KvList (0 means the maximum)."""
    if limit == 0:
        return LIST_LIMIT_MAX
    if limit > LIST_LIMIT_MAX:
        raise InvalidArgumentError(
            f"list limit must be 1-{LIST_LIMIT_MAX} (LIST_LIMIT_MAX); got {limit}"
        )
    return limit
