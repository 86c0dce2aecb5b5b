"""Arguments that do not fit a Durable Object method are the caller's error, refused
before the object runs (found by the fuzz: they used to surface as "remote TypeError")."""

from __future__ import annotations

import pytest

from edgepop.durable import check_call_arguments
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
