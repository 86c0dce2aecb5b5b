"""The one error table: domain errors to gRPC status codes, stable messages, no tracebacks."""

from __future__ import annotations

import grpc
import pytest

from edgepop import errors
from edgepop.errors import from_upstream, status_of

ERROR_CODES = [
    (errors.InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.KeyTooLargeError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ValueTooLargeError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.MetadataInvalidError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.StorageFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (errors.DeadlineError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (errors.LogTruncatedError, grpc.StatusCode.OUT_OF_RANGE),
    (errors.ReplicationGapError, grpc.StatusCode.DATA_LOSS),
    (errors.EdgeError, grpc.StatusCode.INTERNAL),
]


@pytest.mark.parametrize(("error_class", "code"), ERROR_CODES)
def test_status_of_maps_each_domain_error_to_its_code_and_message(
    error_class: type[errors.EdgeError], code: grpc.StatusCode
) -> None:
    assert status_of(error_class("what went wrong")) == (code, "what went wrong")


@pytest.mark.parametrize(
    "error",
    [ValueError("secret path /etc/x"), KeyError("k"), RuntimeError("boom"), AssertionError()],
)
def test_status_of_turns_unknown_exceptions_into_internal_without_details(
    error: BaseException,
) -> None:
    assert status_of(error) == (grpc.StatusCode.INTERNAL, "internal error")


def test_size_limit_errors_are_invalid_argument_errors() -> None:
    for error_class in (
        errors.KeyTooLargeError,
        errors.ValueTooLargeError,
        errors.MetadataInvalidError,
    ):
        assert issubclass(error_class, errors.InvalidArgumentError)


def test_upstream_error_keeps_the_peer_code() -> None:
    error = errors.UpstreamError(grpc.StatusCode.PERMISSION_DENIED, "nope")
    assert status_of(error) == (grpc.StatusCode.PERMISSION_DENIED, "nope")


def _aio_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_unreachable_peer_becomes_unavailable_naming_it(code: grpc.StatusCode) -> None:
    error = from_upstream(_aio_error(code, "connect failed"), "origin")
    assert isinstance(error, errors.UnavailableError)
    status, message = status_of(error)
    assert status == grpc.StatusCode.UNAVAILABLE
    assert "origin" in message and code.name in message


def test_client_error_from_upstream_passes_through_unchanged() -> None:
    error = from_upstream(_aio_error(grpc.StatusCode.INVALID_ARGUMENT, "key too big"), "origin")
    assert status_of(error) == (grpc.StatusCode.INVALID_ARGUMENT, "key too big")
