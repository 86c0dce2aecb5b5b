"""When the replication client calls a stream silent (a partition does not close TCP)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pop_node.replication import SILENCE_CHECKS_PER_TIMEOUT, silence_wait_s

TIMEOUT_S = 3.0


def test_the_check_sleeps_until_the_last_message_is_a_timeout_old() -> None:
    # Heard 1 s ago: nothing to look at for 2 s, whatever arrives meanwhile.
    assert silence_wait_s(heard_at=10.0, now=11.0, idle_timeout_s=TIMEOUT_S, backlog=False) == 2.0
    # A timeout old and nothing waiting: silent now.
    assert silence_wait_s(heard_at=10.0, now=13.0, idle_timeout_s=TIMEOUT_S, backlog=False) == 0


def test_a_backlog_is_not_silence_but_is_looked_at_again_soon() -> None:
    """A reader blocked on a full inbox receives nothing, yet the stream is alive."""
    wait = silence_wait_s(heard_at=10.0, now=14.0, idle_timeout_s=TIMEOUT_S, backlog=True)
    assert wait == pytest.approx(TIMEOUT_S / SILENCE_CHECKS_PER_TIMEOUT)


@given(
    heard_at=st.floats(min_value=0, max_value=1e6),
    elapsed=st.floats(min_value=0, max_value=100),
)
def test_silence_is_declared_exactly_when_nothing_came_for_the_timeout(
    heard_at: float, elapsed: float
) -> None:
    """Never early (a live stream is not dropped), and the wake-up lands at the timeout,
    not up to a polling interval after it."""
    now = heard_at + elapsed
    wait = silence_wait_s(heard_at, now, TIMEOUT_S, backlog=False)
    if wait == 0:
        assert now - heard_at >= TIMEOUT_S
    else:
        assert now + wait == pytest.approx(heard_at + TIMEOUT_S)
