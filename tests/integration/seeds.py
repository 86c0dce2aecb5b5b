"""One seed per test session for the clusters of statistical tests, and how to replay it.

Tests that judge random draws (loss, jitter, the A/B split) start their cluster with
`EDGEPOP_RANDOM_SEED` (see `edgepop.seeding`: a node's draws then restart from the seed
when a test sets its fault or deploys its worker). The seed is `EDGEPOP_TEST_SEED` when
that is set, to replay a failure, else a fresh one; every such test names it in its
failure message.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

from edgepop.seeding import RANDOM_SEED_ENV

TEST_SEED_ENV = "EDGEPOP_TEST_SEED"
SESSION_SEED = int(os.environ.get(TEST_SEED_ENV) or random.SystemRandom().randrange(2**31))


@contextlib.contextmanager
def seeded_nodes(seed: int = SESSION_SEED) -> Iterator[None]:
    """Nodes started inside (and the zygote they fork from) draw from `seed`."""
    before = os.environ.get(RANDOM_SEED_ENV)
    os.environ[RANDOM_SEED_ENV] = str(seed)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(RANDOM_SEED_ENV, None)
        else:
            os.environ[RANDOM_SEED_ENV] = before


def replay(seed: int = SESSION_SEED) -> str:
    """What a failure message says, so that the run can be repeated."""
    return f"cluster seed {seed} (replay: {TEST_SEED_ENV}={seed} pytest ...)"
