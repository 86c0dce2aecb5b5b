"""Retries: the named policies of edgepop.retry behave as documented, and no retry loop
is written by hand in the product code (issue 15: one way to do each thing)."""

from __future__ import annotations

import ast
import asyncio
import itertools
import time
from pathlib import Path

import grpc
import pytest

from edgepop import retry

ROOT = Path(__file__).parents[2]
# The processes, the code they share, and the CLI's tooling that talks to them (the
# console, the fault runs).
PRODUCT = ("pop_node", "origin_node", "control_plane", "edgepop", "edgectl")
POLICIES = ROOT / "edgepop" / "retry.py"
RETRY_WORDS = ("BACKOFF", "RETRIES", "RETRY_")


def product_modules() -> list[Path]:
    return sorted(path for folder in PRODUCT for path in (ROOT / folder).rglob("*.py"))


def _is_sleep(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    called = node.func
    return (called.attr if isinstance(called, ast.Attribute) else getattr(called, "id", "")) == (
        "sleep"
    )


def _sleeps_after_failure(loop: ast.While | ast.For | ast.AsyncFor) -> bool:
    """A loop whose body catches an exception and, in the handler or right after the
    try, sleeps before the next round: a retry loop."""
    for statement in loop.body:
        if not isinstance(statement, ast.Try):
            continue
        for handler in statement.handlers:
            if any(_is_sleep(inner) for inner in ast.walk(handler)):
                return True
    return False


def hand_written_retries(source: str) -> list[str]:
    """What looks like a retry loop written by hand: an attempt counter, a backoff
    computed with `**` or picked from a table, a retry constant, a tenacity policy built
    in place rather than named in edgepop.retry."""
    found = []
    for node in ast.walk(ast.parse(source)):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            name = target.id if isinstance(target, ast.Name) else ""
            # A deadline per attempt (`attempt_timeout_s`) is not a loop.
            counter = "attempt" in name.lower() and not name.lower().endswith("timeout_s")
            if counter or "backoff" in name.lower():
                found.append(f"line {node.lineno}: counter or backoff {name!r}")
            if name.isupper() and any(word in name for word in RETRY_WORDS):
                found.append(f"line {node.lineno}: retry constant {name!r}")
        if isinstance(node, ast.While | ast.For | ast.AsyncFor) and _sleeps_after_failure(node):
            found.append(f"line {node.lineno}: a loop that sleeps after a failure and goes round")
        if isinstance(node, ast.Call):
            called = node.func
            name = called.attr if isinstance(called, ast.Attribute) else getattr(called, "id", "")
            if name in ("AsyncRetrying", "Retrying"):
                found.append(f"line {node.lineno}: a policy built in place ({name})")
            if name == "sleep" and any(
                isinstance(inner, ast.BinOp) and isinstance(inner.op, ast.Pow)
                for argument in node.args
                for inner in ast.walk(argument)
            ):
                found.append(f"line {node.lineno}: an exponential sleep")
    return found


def test_no_retry_loop_is_written_by_hand_outside_the_named_policies() -> None:
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in product_modules()
        if path != POLICIES and (found := hand_written_retries(path.read_text()))
    }
    assert offenders == {}


@pytest.mark.parametrize(
    "source",
    [
        "attempt = 0\nwhile True:\n    attempt += 1",
        "RETRY_BACKOFF_S = (0.1, 0.2)",
        "async def f():\n    await asyncio.sleep(0.5 * 2**n)",
        "policy = AsyncRetrying(stop=stop_never)",
        "for i in range(3):\n    backoff = delays[i]",
        "while True:\n    try:\n        call()\n        break\n    except Error:\n"
        "        await asyncio.sleep(0.05)",
    ],
)
def test_the_finder_finds_the_shapes_we_had(source: str) -> None:
    assert hand_written_retries(source)


def test_the_finder_lets_a_named_policy_be() -> None:
    source = "async def f():\n    async for attempt in retry.forever():\n        pass"
    assert hand_written_retries(source) == []


# -- the policies ------------------------------------------------------------------------


class Moved(Exception):
    pass


@pytest.mark.timing
def test_relocating_retries_until_the_deadline_and_forgets_before_each_retry() -> None:
    forgotten: list[float] = []
    tries: list[float] = []

    async def scenario() -> None:
        deadline = time.monotonic() + 0.3
        async for attempt in retry.relocating(
            deadline, lambda error: isinstance(error, Moved), lambda: forgotten.append(0)
        ):
            with attempt:
                tries.append(time.monotonic())
                raise Moved()

    started = time.monotonic()
    with pytest.raises(Moved):
        asyncio.run(scenario())
    # 0.05 + 0.1 + 0.2 would pass the deadline: the third try is the last.
    assert len(tries) == 3 and len(forgotten) == 2
    assert time.monotonic() - started < 0.3
    waits = [later - earlier for earlier, later in itertools.pairwise(tries)]
    assert waits[0] >= retry.RELOCATE_BACKOFF_S[0] and waits[1] >= retry.RELOCATE_BACKOFF_S[1]


def test_relocating_raises_what_it_must_not_retry_at_once() -> None:
    tries = 0

    async def scenario() -> None:
        nonlocal tries
        async for attempt in retry.relocating(
            time.monotonic() + 5, lambda error: isinstance(error, Moved), lambda: None
        ):
            with attempt:
                tries += 1
                raise ValueError("bad argument")

    with pytest.raises(ValueError):
        asyncio.run(scenario())
    assert tries == 1


def test_relocated_tries_and_waits_as_relocating_does() -> None:
    """The first try outside the policy changes nothing a caller sees: the same tries,
    the same waits, the same forgetting, the last error raised at the deadline."""

    def run(deadline_s: float, use_relocated: bool) -> tuple[list[float], int]:
        forgotten: list[int] = []
        tries: list[float] = []

        async def call() -> None:
            tries.append(time.monotonic())
            raise Moved()

        async def scenario() -> None:
            deadline = time.monotonic() + deadline_s
            moved = lambda error: isinstance(error, Moved)  # noqa: E731
            if use_relocated:
                await retry.relocated(call, deadline, moved, lambda: forgotten.append(0))
                return
            async for attempt in retry.relocating(deadline, moved, lambda: forgotten.append(0)):
                with attempt:
                    await call()

        with pytest.raises(Moved):
            asyncio.run(scenario())
        return [later - earlier for earlier, later in itertools.pairwise(tries)], len(forgotten)

    for deadline_s in (0.03, 0.3, 0.9):
        waits, forgets = run(deadline_s, use_relocated=True)
        expected_waits, expected_forgets = run(deadline_s, use_relocated=False)
        assert len(waits) == len(expected_waits) and forgets == expected_forgets
        assert forgets == len(waits)
        for index, waited in enumerate(waits):
            backoff = retry.RELOCATE_BACKOFF_S[min(index, len(retry.RELOCATE_BACKOFF_S) - 1)]
            assert backoff <= waited < 2 * backoff  # the next level would be twice as long
    # 0.05 + 0.1 + 0.2 + 0.4 ends within 0.9 s: five tries; 0.03 s allows one.
    assert len(run(0.9, use_relocated=True)[0]) == 4
    assert run(0.03, use_relocated=True)[0] == []


def test_relocated_builds_no_policy_for_a_first_try_that_answers_or_must_not_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_policy(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a policy was built")

    monkeypatch.setattr(retry, "relocating", no_policy)
    moved = lambda error: isinstance(error, Moved)  # noqa: E731

    async def answers() -> int:
        return 7

    async def refuses() -> int:
        raise ValueError("bad argument")

    deadline = time.monotonic() + 5
    assert asyncio.run(retry.relocated(answers, deadline, moved, lambda: None)) == 7
    with pytest.raises(ValueError):
        asyncio.run(retry.relocated(refuses, deadline, moved, lambda: None))


def test_alarm_retries_back_off_exponentially_and_give_up_after_six(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(retry, "ALARM_RETRY_BASE_S", 0.001)
    tries = 0

    async def scenario() -> None:
        nonlocal tries
        async for attempt in retry.alarm_retries(lambda error: isinstance(error, Moved)):
            with attempt:
                tries += 1
                raise Moved()

    with pytest.raises(Moved):
        asyncio.run(scenario())
    assert tries == retry.ALARM_RETRIES_MAX + 1


def _rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="")


@pytest.mark.parametrize(
    ("code", "tries_expected"),
    [(grpc.StatusCode.UNAVAILABLE, "several"), (grpc.StatusCode.INVALID_ARGUMENT, 1)],
)
@pytest.mark.timing
def test_a_heartbeat_is_resent_while_refused_and_never_past_its_deadline(
    code: grpc.StatusCode, tries_expected: object
) -> None:
    tries: list[float] = []
    interval_s = 0.02

    async def scenario() -> None:
        deadline = time.monotonic() + 0.2
        async for attempt in retry.resend_until(deadline, interval_s):
            with attempt:
                tries.append(time.monotonic())
                raise _rpc_error(code)

    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError):
        asyncio.run(scenario())
    assert time.monotonic() - started < 0.2 + interval_s
    if tries_expected == "several":
        assert 3 <= len(tries) <= 0.2 / interval_s
        waits = [later - earlier for earlier, later in itertools.pairwise(tries)]
        assert min(waits) >= interval_s * 0.9
    else:
        assert len(tries) == tries_expected


def unavailable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata()
    )


def test_idempotent_tries_and_waits_as_retry_idempotent_does() -> None:
    """The first try outside the policy changes nothing a caller sees: the same tries,
    the same backoff, the last error raised when the next wait would pass the deadline."""

    def run(budget_s: float, use_idempotent: bool) -> list[float]:
        tries: list[float] = []

        async def call() -> None:
            tries.append(time.monotonic())
            raise unavailable()

        async def scenario() -> None:
            if use_idempotent:
                await retry.idempotent(call, time.monotonic() + budget_s)
                return
            async for attempt in retry.retry_idempotent(budget_s):
                with attempt:
                    await call()

        with pytest.raises(grpc.aio.AioRpcError):
            asyncio.run(scenario())
        return [later - earlier for earlier, later in itertools.pairwise(tries)]

    # Budgets no jitter can move a try across: waits of 0.05, 0.1, 0.2 and 0.4 s, each
    # plus up to 0.05, fit 0 of them in 0.03 s, 2 in 0.3 s and 3 in 0.7 s.
    for budget_s, tries_after_the_first in ((0.03, 0), (0.3, 2), (0.7, 3)):
        waits = run(budget_s, use_idempotent=True)
        assert len(waits) == len(run(budget_s, use_idempotent=False)) == tries_after_the_first
        for index, waited in enumerate(waits):
            backoff = min(retry.IDEMPOTENT_BACKOFF_MAX_S, retry.IDEMPOTENT_BACKOFF_S * 2**index)
            assert backoff <= waited < backoff + retry.IDEMPOTENT_JITTER_S + 0.1


def test_idempotent_builds_no_policy_for_a_first_try_that_answers_or_must_not_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_policy(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a policy was built")

    monkeypatch.setattr(retry, "retry_idempotent", no_policy)

    async def answers() -> int:
        return 7

    async def refuses() -> int:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata()
        )

    deadline = time.monotonic() + 5
    assert asyncio.run(retry.idempotent(answers, deadline)) == 7
    with pytest.raises(grpc.aio.AioRpcError):
        asyncio.run(retry.idempotent(refuses, deadline))
