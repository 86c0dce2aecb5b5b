"""Durable Object ids: 256 bits, written as 64 hex characters.

The first 28 bytes identify the object (a hash of the name, or random); the last 4 tag
the class namespace, so an id made for one namespace is refused by another ("foreign"),
as Cloudflare refuses an id from another namespace binding.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets

from edgepop.errors import InvalidArgumentError

ID_BYTES = 32
TAG_BYTES = 4
ID_HEX_CHARS = 2 * ID_BYTES
CLASS_NAMESPACE_BYTES_MAX = 128  # worker name (63) + "." + class name (64)
OBJECT_NAME_BYTES_MAX = 1024
_HEX_RE = re.compile(r"[0-9a-f]{64}")
# A built-in class ("Counter"), or a worker's own class scoped by the worker's name
# ("chat-app.ChatRoom"), so that one worker's class never answers for another's.
_CLASS_NAMESPACE_RE = re.compile(r"(?:[a-z0-9][a-z0-9-]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,63}")


def check_class_namespace(namespace: str) -> None:
    if len(namespace) > CLASS_NAMESPACE_BYTES_MAX or not _CLASS_NAMESPACE_RE.fullmatch(namespace):
        raise InvalidArgumentError(
            f"object namespace must be a class name, or WORKER.ClassName for a worker's own"
            f" class, of at most {CLASS_NAMESPACE_BYTES_MAX} characters; got {namespace!r}"
        )


def namespace_tag(namespace: str) -> bytes:
    return hashlib.sha256(b"edgepop-object-namespace:" + namespace.encode()).digest()[:TAG_BYTES]


@functools.lru_cache(maxsize=65_536)
def id_from_name(namespace: str, name: str) -> bytes:
    """The same name gives the same id in one namespace, a different one in another."""
    check_class_namespace(namespace)
    encoded = name.encode("utf-8")
    if not encoded or len(encoded) > OBJECT_NAME_BYTES_MAX:
        raise InvalidArgumentError(
            f"object name must be 1-{OBJECT_NAME_BYTES_MAX} bytes (OBJECT_NAME_BYTES_MAX)"
        )
    digest = hashlib.sha256(namespace.encode() + b"\x00" + encoded).digest()
    return digest[: ID_BYTES - TAG_BYTES] + namespace_tag(namespace)


def new_unique_id(namespace: str) -> bytes:
    check_class_namespace(namespace)
    return secrets.token_bytes(ID_BYTES - TAG_BYTES) + namespace_tag(namespace)


def id_from_string(namespace: str, text: str) -> bytes:
    """Parse a hex id; malformed or made for another namespace -> INVALID_ARGUMENT."""
    check_class_namespace(namespace)
    if not _HEX_RE.fullmatch(text):
        raise InvalidArgumentError(f"object id must be {ID_HEX_CHARS} lowercase hex characters")
    raw = bytes.fromhex(text)
    if raw[-TAG_BYTES:] != namespace_tag(namespace):
        raise InvalidArgumentError(f"object id does not belong to namespace {namespace!r}")
    return raw


def resolve(namespace: str, name: str, id_text: str) -> bytes:
    """The id a request names: exactly one of `name` and `id` must be given."""
    if bool(name) == bool(id_text):
        raise InvalidArgumentError("give exactly one of an object name and an object id")
    return id_from_name(namespace, name) if name else id_from_string(namespace, id_text)


class DurableObjectId:
    """Cloudflare's id object (`idFromName`, `ctx.id`): 64 hex characters, and the name
    it was made from when there is one. Equal to another id, or to its hex text."""

    __slots__ = ("_hex", "name")

    def __init__(self, hex_id: str, name: str | None = None) -> None:
        self._hex = hex_id
        self.name = name

    def toString(self) -> str:
        return self._hex

    def equals(self, other: object) -> bool:
        return self == other

    def __str__(self) -> str:
        return self._hex

    def __repr__(self) -> str:
        return f"DurableObjectId({self._hex!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DurableObjectId):
            return self._hex == other._hex
        return isinstance(other, str) and self._hex == other

    def __hash__(self) -> int:
        return hash(self._hex)
