"""How long a PoP may work on a request before it must answer (the client's deadline,
minus a margin).

A PoP that waits on another node (the origin, an object's owner, the control plane)
answers a little before the client's own deadline, so the client hears our status —
UNAVAILABLE naming what could not be reached, and why — rather than its own timeout.
"""

from __future__ import annotations

# Answer this share of the client's deadline early, within bounds.
DEADLINE_MARGIN_SHARE = 0.1
DEADLINE_MARGIN_S_MIN = 0.05
DEADLINE_MARGIN_S_MAX = 0.5


def answer_budget_s(remaining_s: float | None, default_s: float) -> float:
    """Seconds to work before answering: `default_s` when the client set no deadline."""
    if remaining_s is None:
        return default_s
    margin = min(
        DEADLINE_MARGIN_S_MAX, max(DEADLINE_MARGIN_S_MIN, remaining_s * DEADLINE_MARGIN_SHARE)
    )
    return max(0.0, remaining_s - margin)
