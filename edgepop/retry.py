"""Retry policies, defined once (tenacity). Only what is safe to repeat is retried.

- reads, heartbeats, registrations and stream (re)connects retry on UNAVAILABLE-like
  failures, with exponential backoff and jitter;
- writes retry only when they carry a request id (the origin answers a repeat with the
  first commit's seq) — see `retry_idempotent`.
Every call made under these policies still has its own deadline.
"""

from __future__ import annotations

import logging

import grpc
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_before_delay,
    stop_never,
    wait_exponential_jitter,
)

log = logging.getLogger(__name__)

RETRYABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}
)
WRITE_RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})


def is_retryable(error: BaseException) -> bool:
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code() in RETRYABLE_CODES
    return isinstance(error, OSError | ConnectionError | TimeoutError)


def is_retryable_write(error: BaseException) -> bool:
    return isinstance(error, grpc.aio.AioRpcError) and error.code() in WRITE_RETRYABLE_CODES


def forever(initial_s: float = 0.05, max_s: float = 2.0) -> AsyncRetrying:
    """Background connections (replication, registration): never give up."""
    return AsyncRetrying(
        retry=retry_if_exception(is_retryable),
        wait=wait_exponential_jitter(initial=initial_s, max=max_s, jitter=initial_s),
        stop=stop_never,
        reraise=True,
    )


def retry_idempotent(budget_s: float) -> AsyncRetrying:
    """A read, or a write carrying a request id, within the caller's deadline."""
    return AsyncRetrying(
        retry=retry_if_exception(is_retryable_write),
        wait=wait_exponential_jitter(initial=0.05, max=0.5, jitter=0.05),
        # Never sleep past the budget: the caller must hear our status before its deadline.
        stop=stop_before_delay(max(0.0, budget_s)),
        reraise=True,
    )
