"""How foreground edgectl commands (`cluster up`, `observe`) are stopped."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM takes the same path as Ctrl-C: unwind, then stop what the command started.
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupted_by_signals() -> Iterator[None]:
    """SIGTERM and SIGINT both raise KeyboardInterrupt inside the block.

    SIGINT explicitly too: a process started in the background by a non-interactive shell
    inherits SIGINT as *ignored*, and Python then keeps ignoring it; Ctrl-C (or a
    supervisor's SIGINT) must still stop the command.
    """
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)
