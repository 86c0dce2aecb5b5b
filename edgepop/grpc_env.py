"""gRPC C-core settings of a node process, applied before `grpc` is imported.

grpcio reads `GRPC_EXPERIMENTS` once, when its extension module is imported, so each
role's package `__init__` calls `use_node_defaults()` before anything imports grpc (the
zygote imports the roles before it forks, and `python -m pop_node` imports the package
first). A user's own `GRPC_EXPERIMENTS` wins.

Why these: a node's cost is mostly per message, and on the 2-core VMs this runs on most
of it is thread wakes (a context switch costs tens of microseconds there). With grpcio
1.85's EventEngine client and listener, a message on a replication stream wakes the
receiving PoP 7.4 times (event-engine pool, aio poller, event loop); with the classic
iomgr endpoints 2.6 times, and its CPU per message falls from ~280 to ~205 µs. The
origin's per-write cost fell ~10% (1 PoP, 300 writes/s) and, at 1,000 writes/s to 12
PoPs, commit -> apply p99 fell from 188-255 ms to 77-99 ms over three alternated runs
(docs/ARCHITECTURE.md, "gRPC endpoints").
"""

from __future__ import annotations

import os
import sys

GRPC_EXPERIMENTS_ENV = "GRPC_EXPERIMENTS"
# Names are grpcio 1.85's (pinned in pyproject.toml); an unknown one is logged and ignored.
NODE_GRPC_EXPERIMENTS = "-event_engine_client,-event_engine_listener"


def use_node_defaults(environ: os._Environ[str] | dict[str, str] | None = None) -> bool:
    """Set a node's gRPC experiments unless the environment already names some.

    Returns whether they take effect in this process: False when grpc was imported
    already (its settings are fixed then) or the user chose their own.
    """
    env = os.environ if environ is None else environ
    if GRPC_EXPERIMENTS_ENV in env:
        return False
    env[GRPC_EXPERIMENTS_ENV] = NODE_GRPC_EXPERIMENTS
    return "grpc._cython.cygrpc" not in sys.modules
