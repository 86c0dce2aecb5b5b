"""Retry policies, defined once (tenacity). Only what is safe to repeat is retried.

- reads, heartbeats, registrations and stream (re)connects retry on UNAVAILABLE-like
  failures, with exponential backoff and jitter;
- writes retry only when they carry a request id (the origin answers a repeat with the
  first commit's seq) — see `retry_idempotent`;
- an object call or session finds its owner again (`relocating`), within its deadline;
- a replication stream reconnects after any end without progress (`reconnect`);
- a Durable Object's alarm is retried as Cloudflare does (`alarm_retries`);
- a heartbeat is sent again while the control plane refuses it (`resend_until`);
- the fault-run tooling (edgectl/chaos) has its own three: a client operation tried at
  another entry after an ambiguous failure (`rerouted`), an admin call or final read
  that must get through (`until_answered`), a node restart tried a few times (`restarts`).
Every call made under these policies still has its own deadline. No retry loop is
written by hand elsewhere (tests/unit/test_retry.py looks for them).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    stop_before_delay,
    stop_never,
    wait_exponential,
    wait_exponential_jitter,
    wait_fixed,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

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
        wait=wait_exponential_jitter(multiplier=initial_s, max=max_s, jitter=initial_s),
        stop=stop_never,
        reraise=True,
    )


def resend_until(
    deadline: float,
    interval_s: float,
    resendable: Callable[[BaseException], bool] = is_retryable_write,
) -> AsyncRetrying:
    """A message that renews something (a heartbeat): sent again every `interval_s` while
    the peer refuses it with UNAVAILABLE (a control plane shutting down refuses new calls
    before its connection closes), or while `resendable` says so of the error, never past
    `deadline` (monotonic); the last error is raised instead."""

    def past_deadline(state: RetryCallState) -> bool:
        return time.monotonic() + interval_s >= deadline

    return AsyncRetrying(
        retry=retry_if_exception(resendable),
        wait=wait_fixed(interval_s),
        stop=past_deadline,
        reraise=True,
    )


# A repeatable call's backoff: IDEMPOTENT_BACKOFF_S doubling per try, at most
# IDEMPOTENT_BACKOFF_MAX_S, plus up to IDEMPOTENT_JITTER_S.
IDEMPOTENT_BACKOFF_S = 0.05
IDEMPOTENT_BACKOFF_MAX_S = 0.5
IDEMPOTENT_JITTER_S = 0.05


def retry_idempotent(budget_s: float, tried: int = 0) -> AsyncRetrying:
    """A read, or a write carrying a request id, within the caller's deadline. `tried`:
    attempts already made and waited after (`idempotent`), so the waits go on from there."""
    return AsyncRetrying(
        retry=retry_if_exception(is_retryable_write),
        wait=wait_exponential_jitter(
            multiplier=IDEMPOTENT_BACKOFF_S * 2**tried,
            max=IDEMPOTENT_BACKOFF_MAX_S,
            jitter=IDEMPOTENT_JITTER_S,
        ),
        # Never sleep past the budget: the caller must hear our status before its deadline.
        stop=stop_before_delay(max(0.0, budget_s)),
        reraise=True,
    )


async def idempotent(call: Callable[[], Awaitable[T]], deadline: float) -> T:
    """`call()` under `retry_idempotent` until `deadline` (monotonic), whose policy is
    built only once the first try failed (as `relocated`).

    A tenacity policy is a knot of cyclic references (the policy, its state, a future, a
    lock): at a PoP under worker load, one per call to the origin was most of the cyclic
    garbage, and the full collections that cleared it took 30-40 ms each. The tries,
    waits and stop are `retry_idempotent`'s: the first failure waits its first backoff
    (unless that would pass the deadline: then it is raised), and the policy goes on."""
    return await _first_try_then(
        call,
        deadline,
        is_retryable_write,
        lambda: min(
            IDEMPOTENT_BACKOFF_MAX_S, IDEMPOTENT_BACKOFF_S + random.uniform(0, IDEMPOTENT_JITTER_S)
        ),
        lambda: retry_idempotent(deadline - time.monotonic(), tried=1),
    )


async def _first_try_then(
    call: Callable[[], Awaitable[T]],
    deadline: float,
    retryable: Callable[[BaseException], bool],
    first_wait_s: Callable[[], float],
    policy: Callable[[], AsyncRetrying],
    before_retry: Callable[[], None] = lambda: None,
) -> T:
    """`call()` once without a policy; after a retryable failure, wait `first_wait_s()`
    (unless that would pass `deadline`: then the failure is raised) and go on under
    `policy()`, built only then (`idempotent`, `relocated`)."""
    try:
        return await call()
    except Exception as error:
        wait_s = first_wait_s()
        if not retryable(error) or time.monotonic() + wait_s >= deadline:
            raise
    before_retry()
    await asyncio.sleep(wait_s)
    async for attempt in policy():
        with attempt:
            return await call()
    raise AssertionError("a policy raises its last error when it stops")


# Finding an object's owner again: quick at first (a stale cache entry is answered at
# once), then backing off while a failover completes.
RELOCATE_BACKOFF_S = (0.05, 0.1, 0.2, 0.4)


def relocating(
    deadline: float,
    retryable: Callable[[BaseException], bool],
    before_retry: Callable[[], None],
    tried: int = 0,
) -> AsyncRetrying:
    """An object call or session open, tried again against a fresh location while
    `retryable` says so, never sleeping past `deadline` (monotonic): the last error is
    raised instead. `before_retry` forgets the stale location. `tried`: attempts already
    made and waited after (`relocated`), so the waits go on from there."""

    def wait(state: RetryCallState) -> float:
        index = state.attempt_number - 1 + tried
        return RELOCATE_BACKOFF_S[min(index, len(RELOCATE_BACKOFF_S) - 1)]

    def past_deadline(state: RetryCallState) -> bool:
        return time.monotonic() + (state.upcoming_sleep or 0.0) >= deadline

    return AsyncRetrying(
        retry=retry_if_exception(retryable),
        wait=wait,
        stop=past_deadline,
        before_sleep=lambda _state: before_retry(),
        reraise=True,
    )


async def relocated(
    call: Callable[[], Awaitable[T]],
    deadline: float,
    retryable: Callable[[BaseException], bool],
    before_retry: Callable[[], None],
) -> T:
    """`call()` under `relocating`, whose policy is built only once the first try failed.

    Nearly every object call finds its owner at once, and building and stepping a
    tenacity policy for it cost ~15 us, about 3% of a hot object's CPU per call. The
    tries, waits and stop are `relocating`'s: the first failure waits its first backoff
    (unless that would pass the deadline: then it is raised), and the policy goes on."""
    return await _first_try_then(
        call,
        deadline,
        retryable,
        lambda: RELOCATE_BACKOFF_S[0],
        lambda: relocating(deadline, retryable, before_retry, tried=1),
        before_retry,
    )


def reconnect(initial_s: float = 0.05, max_s: float = 2.0) -> AsyncRetrying:
    """A stream followed for ever: any end without progress (an error, a silent or a
    refused stream) reconnects after a backoff. A follower that made progress returns
    normally and starts a fresh policy, so its next outage begins with a short wait."""
    return AsyncRetrying(
        retry=retry_if_exception_type(Exception),
        wait=wait_exponential_jitter(multiplier=initial_s, max=max_s, jitter=initial_s),
        stop=stop_never,
    )


# Cloudflare retries a failed alarm() up to six times, backing off exponentially from
# about a second (ours starts at 0.5 s: tests wait for it).
ALARM_RETRIES_MAX = 6
ALARM_RETRY_BASE_S = 0.5


def alarm_retries(retryable: Callable[[BaseException], bool]) -> AsyncRetrying:
    """A Durable Object's `alarm()`: ALARM_RETRIES_MAX retries, 0.5 s, 1 s, 2 s, ...;
    the last failure is raised for the caller to cancel the alarm."""
    return AsyncRetrying(
        retry=retry_if_exception(retryable),
        wait=wait_exponential(multiplier=ALARM_RETRY_BASE_S, exp_base=2),
        stop=stop_after_attempt(ALARM_RETRIES_MAX + 1),
        before_sleep=lambda state: log.warning(
            "alarm failed (%s); retry in %.1f s",
            state.outcome.exception() if state.outcome is not None else "?",
            state.upcoming_sleep,
        ),
        reraise=True,
    )


# -- the fault-run tooling's policies (edgectl/chaos) -------------------------------------


def rerouted(give_up_s: float, retryable: Callable[[BaseException], bool]) -> AsyncRetrying:
    """A test client's operation, tried again (the caller picks another entry PoP) while
    `retryable` says the failure was ambiguous, with backoff and jitter, for at most
    `give_up_s`; then the last error is raised."""
    return AsyncRetrying(
        retry=retry_if_exception(retryable),
        stop=stop_after_delay(give_up_s),
        wait=wait_exponential_jitter(multiplier=0.05, max=0.5, jitter=0.05),
        reraise=True,
    )


def until_answered(give_up_s: float, interval_s: float) -> AsyncRetrying:
    """A call the tooling needs answered (set or heal a fault, the final read of a run):
    any gRPC failure is tried again every `interval_s`, for at most `give_up_s`."""
    return AsyncRetrying(
        retry=retry_if_exception_type(grpc.aio.AioRpcError),
        stop=stop_after_delay(give_up_s),
        wait=wait_fixed(interval_s),
        reraise=True,
    )


def restarts(tries: int, failure: type[BaseException]) -> AsyncRetrying:
    """Starting a node again: up to `tries` times while it fails with `failure` (a port
    taken meanwhile, a start that timed out), at once each time."""
    return AsyncRetrying(
        retry=retry_if_exception_type(failure),
        stop=stop_after_attempt(tries),
        reraise=True,
    )
