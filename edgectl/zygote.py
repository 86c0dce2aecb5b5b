"""A fork server for cluster start: import what every node shares once, then fork each node.

Importing grpc, protobuf, aiohttp, LMDB and prometheus costs each process about half a
second of CPU; a 14-process cluster on 2 cores would spend seconds just importing. The
zygote imports them once and forks a node per request, so nodes start in tens of
milliseconds. What only one process needs stays out: every forked node's RSS counts all
of the zygote's memory, so the origin's JWT signing (PyJWT and cryptography, ~4 MiB of
every PoP's RSS when preloaded) is imported by the origin itself, and the certificate
checks (cryptography) only by a cluster with TLS (`--tls`). It forks before anything
starts threads or opens sockets (grpc and the event loop start inside the child),
re-seeds `random` in each child, and reaps its children; when its requester goes away it
waits for its children, then exits.

Protocol (JSON lines): request {"module", "argv", "log"} on stdin -> {"pid"} on stdout.
A node restarted later by `edgectl node start` is spawned normally (no zygote needed).

Started as `python -m edgectl.zygote --cluster DIR`: a forked node keeps the zygote's
command line, so DIR in it is how `ps`, `pgrep -f DIR` and `edgectl cluster down` find
every process of a cluster. A forked node inherits the zygote's environment, so a
foreground launcher's EDGEPOP_LAUNCHER (edgepop.lifecycle) reaches every node.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import random
import signal
import sys
import traceback
from typing import Any

# The PoP and control plane roles, which import nearly all the origin imports too. The
# origin's own modules and its JWT libraries are left to it (see the docstring).
ROLE_MAINS = ("control_plane.__main__", "pop_node.__main__")
# The config file models a node loads on demand (a topology file at start, worker.yaml or
# a wrangler config in each deploy): held here once for every node forked, not imported
# by each (pydantic is ~0.1 s of a process's CPU).
PRELOADED = (*ROLE_MAINS, "edgepop.topology_file", "edgepop.worker_yaml", "edgepop.wrangler_model")
# With TLS every node checks its certificate files at start.
PRELOADED_FOR_TLS = ("edgepop.certfiles",)


def _reap(signum: int = 0, frame: Any = None) -> None:
    with contextlib.suppress(ChildProcessError):
        while True:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return


def _child(module: str, argv: list[str], log_path: str) -> None:
    """In the forked child: detach, redirect output, run the role's main, never return."""
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        random.seed()
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        sys.argv = [module.split(".")[0], *argv]
        importlib.import_module(module).main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def main() -> None:
    parser = argparse.ArgumentParser(prog="edgectl.zygote", description=__doc__)
    # Read by nobody here: it is there to be seen in the command line (see the docstring).
    parser.add_argument("--cluster", metavar="DIR", help="the data dir of the cluster")
    parser.add_argument("--tls", action="store_true", help="the nodes run with mutual TLS")
    args = parser.parse_args()
    for module in (*PRELOADED, *(PRELOADED_FOR_TLS if args.tls else ())):
        importlib.import_module(module)
    signal.signal(signal.SIGCHLD, _reap)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request["module"], request["argv"], request["log"])
        print(json.dumps({"pid": pid}), flush=True)
    # The requester is gone: stay to reap the children, then leave.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    with contextlib.suppress(ChildProcessError):
        while True:
            os.wait()


if __name__ == "__main__":
    main()
