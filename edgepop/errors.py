"""Domain errors and the one table that maps them to gRPC status codes.

Handlers raise these; the `rpc` decorator (edgepop.rpc) turns them into a status with a
stable message. Tracebacks never go on the wire: anything not listed here becomes
INTERNAL "internal error" and is logged on the node.
"""

from __future__ import annotations

import grpc


class EdgeError(Exception):
    """Base of every error a client may see; `code` is the gRPC status it maps to.

    `reason`, when set, travels as trailing metadata (REASON_KEY): another node tells this
    error from others of the same code by it, never by its message (`reason_of`).
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = ""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(EdgeError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class KeyTooLargeError(InvalidArgumentError):
    pass


class ValueTooLargeError(InvalidArgumentError):
    pass


class MetadataInvalidError(InvalidArgumentError):
    pass


class SqlError(InvalidArgumentError):
    """A SQL statement failed (D1's "D1_ERROR"); the transaction was rolled back.

    `statement_index` is the failing statement's place in its query (0-based; None when
    the query as a whole was refused). It travels as the `reason` ("sql-statement:N"), so
    the worker binding's `exec` can say "Error in line N" as D1 does, also when the error
    came back from the origin.
    """

    def __init__(self, message: str, statement_index: int | None = None) -> None:
        super().__init__(f"{D1_ERROR}: {message}")
        self.statement_index = statement_index
        if statement_index is not None:
            self.reason = f"{SQL_STATEMENT_REASON}{statement_index}"


class SqlLimitExceededError(SqlError):
    """A query ran into a resource limit rather than being wrong: the database's size
    (DATABASE_BYTES_MAX), its duration (QUERY_SECONDS_MAX), its result's size. Rolled back
    alone, like any SqlError, but RESOURCE_EXHAUSTED: the same query may pass later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


# D1's error prefixes (https://developers.cloudflare.com/d1/observability/debug-d1/): a
# message starts with one of them, and code written for Cloudflare matches on it.
D1_ERROR = "D1_ERROR"
D1_TYPE_ERROR = "D1_TYPE_ERROR"
D1_COLUMN_NOTFOUND = "D1_COLUMN_NOTFOUND"
D1_EXEC_ERROR = "D1_EXEC_ERROR"
D1_PREFIXES = (D1_ERROR, D1_TYPE_ERROR, D1_COLUMN_NOTFOUND, D1_EXEC_ERROR, "D1_DUMP_ERROR")
# The `reason` of a SqlError that names its statement: this, then the 0-based index.
SQL_STATEMENT_REASON = "sql-statement:"


def d1_message(message: str) -> str:
    """`message` as D1 words errors: it already starts with a D1 prefix, or gets
    "D1_ERROR: " (a missing database, an unreachable origin, a malformed bookmark)."""
    if message.startswith(D1_PREFIXES):
        return message
    return f"{D1_ERROR}: {message}"


def statement_index_of(reason: str) -> int | None:
    """The failing statement's index a SqlError's `reason` carries (None if it has none)."""
    if not reason.startswith(SQL_STATEMENT_REASON):
        return None
    digits = reason.removeprefix(SQL_STATEMENT_REASON)
    return int(digits) if digits.isdigit() else None


class NotFoundError(EdgeError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(EdgeError):
    code = grpc.StatusCode.ALREADY_EXISTS


class StorageFullError(EdgeError):
    """The LMDB map is full: writes are refused, reads keep working."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(EdgeError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class UnimplementedError(EdgeError):
    code = grpc.StatusCode.UNIMPLEMENTED


class OverloadedError(EdgeError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(EdgeError):
    """A dependency (the origin, the control plane) cannot be reached in time."""

    code = grpc.StatusCode.UNAVAILABLE


class StorageIOError(UnavailableError):
    """The disk refused a commit (an I/O error on its write or sync): the write is not
    acknowledged and may be retried (with its request id); reads keep working."""


class DeadlineError(EdgeError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnauthenticatedError(EdgeError):
    code = grpc.StatusCode.UNAUTHENTICATED


class LogTruncatedError(EdgeError):
    """A subscriber asked for entries the log no longer holds (it must take a snapshot)."""

    code = grpc.StatusCode.OUT_OF_RANGE


class ReplicationGapError(EdgeError):
    """A batch does not continue the replica's applied seq: never applied, stream restarts."""

    code = grpc.StatusCode.DATA_LOSS


# A status message travels in an HTTP/2 header (percent-encoded, so up to three times its
# UTF-8 size); past the peer's metadata limit (8-16 KiB) the client gets RESOURCE_EXHAUSTED
# "Stream removed" instead of the status. Messages quote the input they refuse, which may
# be anything: they are clipped to this.
STATUS_MESSAGE_BYTES_MAX = 1024


def clip_message(message: str, limit: int = STATUS_MESSAGE_BYTES_MAX) -> str:
    """`message`, cut to at most `limit` UTF-8 bytes (saying how long it was) if longer."""
    encoded = message.encode("utf-8", errors="replace")
    if len(encoded) <= limit:
        return message
    suffix = f" … ({len(encoded)} bytes, clipped)"
    head = encoded[: limit - len(suffix.encode())].decode("utf-8", errors="ignore")
    return head + suffix


# The trailing metadata key that carries an error's `reason`.
REASON_KEY = "edge-error-reason"


def reason_of(error: grpc.aio.AioRpcError) -> str:
    """The `reason` a node sent with an error status ("" when none)."""
    for key, value in error.trailing_metadata() or ():
        if key == REASON_KEY:
            return value if isinstance(value, str) else value.decode()
    return ""


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client sees for `error`."""
    if isinstance(error, EdgeError):
        return error.code, clip_message(error.message)
    return grpc.StatusCode.INTERNAL, "internal error"


class UpstreamError(EdgeError):
    """A status from another node, passed on to the caller unchanged (its reason too)."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


def from_upstream(error: grpc.aio.AioRpcError, what: str) -> EdgeError:
    """The error a caller sees when a call to another node failed.

    Client errors (bad argument, too large) pass through as they are; a peer that cannot
    be reached in time becomes UNAVAILABLE naming it.
    """
    code = error.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return UnavailableError(f"{what} unreachable: {code.name} ({error.details()})")
    return UpstreamError(code, error.details() or code.name, reason_of(error))
