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
    """SIGTERM, SIGINT and SIGHUP raise KeyboardInterrupt inside the block.

    SIGINT explicitly too: a process started in the background by a non-interactive shell
    inherits SIGINT as *ignored*, and Python then keeps ignoring it; Ctrl-C (or a
    supervisor's SIGINT) must still stop the command. SIGHUP (the terminal closed) would
    otherwise end the command without stopping what it started — unless it is ignored
    (`nohup`): then it stays ignored.
    """
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous_hup = signal.getsignal(signal.SIGHUP)
    if previous_hup is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)
        if previous_hup is not signal.SIG_IGN:
            signal.signal(signal.SIGHUP, previous_hup)
