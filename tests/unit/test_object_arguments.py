"""Arguments that do not fit a Durable Object method are the caller's error, refused
before the object runs (found by the fuzz: they used to surface as "remote TypeError")."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from edgepop.durable import DurableObject, check_call_arguments
from edgepop.errors import InvalidArgumentError
from pop_node.objects.builtin import Counter, RateLimiter


def test_arguments_that_fit_the_method_pass() -> None:
    check_call_arguments(Counter, "increment", [], {})
    check_call_arguments(Counter, "increment", [5], {})
    check_call_arguments(Counter, "increment", [], {"by": 2})
    check_call_arguments(RateLimiter, "check", ["k"], {"limit": 3})


@pytest.mark.parametrize(
    ("method", "args", "kwargs"),
    [
        ("get", [1, 2, 3], {}),
        ("increment", [1, 2], {}),
        ("increment", [], {"step": 1}),
        ("increment", [1], {"by": 2}),
    ],
)
def test_arguments_that_do_not_fit_are_invalid_argument(
    method: str, args: list[object], kwargs: dict[str, object]
) -> None:
    with pytest.raises(InvalidArgumentError, match=f"Counter.{method}"):
        check_call_arguments(Counter, method, list(args), dict(kwargs))


class Shapes(DurableObject):
    """Signatures of every kind of parameter, for the check's fast path."""

    async def none(self) -> None: ...

    async def two(self, a: int, b: int) -> None: ...

    async def defaults(self, a: int, b: int = 1, c: int = 2) -> None: ...

    async def rest(self, a: int, *more: int) -> None: ...

    async def keyword(self, a: int, *, key: int) -> None: ...

    async def keyword_default(self, a: int, *, key: int = 0) -> None: ...

    async def anything(self, *args: Any, **kwargs: Any) -> None: ...


@pytest.mark.parametrize(
    "method", ["none", "two", "defaults", "rest", "keyword", "keyword_default", "anything"]
)
@pytest.mark.parametrize("count", range(5))
def test_positional_arguments_are_refused_exactly_when_they_do_not_bind(
    method: str, count: int
) -> None:
    args = list(range(count))
    try:
        inspect.signature(getattr(Shapes, method)).bind(None, *args)
    except TypeError:
        with pytest.raises(InvalidArgumentError, match=f"Shapes.{method}"):
            check_call_arguments(Shapes, method, args, {})
    else:
        check_call_arguments(Shapes, method, args, {})
