"""`edgectl console`: serve the web console of the cluster in --data-dir until Ctrl-C."""

from __future__ import annotations

import argparse
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from edgectl import views
from edgectl.console import PORT_DEFAULT
from edgectl.signals import interrupted_by_signals

if TYPE_CHECKING:
    from edgectl.cli import CommandSet
    from edgectl.console.app import ConsoleServer

__all__ = ["PORT_DEFAULT", "port_or_free", "register_console", "start_console"]


def register_console(commands: CommandSet) -> None:
    parser = commands.add(
        "console",
        cmd_console,
        "serve the web console (world map, live numbers, faults and nodes by click) "
        "until Ctrl-C; prints its URL, which carries the cluster token",
    )
    parser.add_argument(
        "--port",
        type=int,
        metavar="N",
        help=f"the console's port (default: {PORT_DEFAULT} if free, else any free port)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; elsewhere every view needs the token)",
    )


def port_or_free(host: str, port: int | None) -> int:
    """`port` as given, else the default when it is free, else 0 (any free port)."""
    if port is not None:
        return port
    with socket.socket() as probe:
        try:
            probe.bind((host, PORT_DEFAULT))
        except OSError:
            return 0
    return PORT_DEFAULT


def start_console(data_dir: Path, host: str, port: int | None) -> ConsoleServer:
    """Serve the console of the cluster in `data_dir` on `port` (None: `port_or_free`)."""
    # Imported here, not at the top: aiohttp is ~0.14 s of every edgectl command's start.
    from edgectl.console.app import ConsoleConfig, ConsoleServer

    server = ConsoleServer(ConsoleConfig(data_dir, host, port_or_free(host, port)))
    server.start()
    return server


def cmd_console(args: argparse.Namespace) -> int:
    server = start_console(args.data_dir, args.host, args.port)
    views.stdout.print(f"console: {server.url}", markup=False, soft_wrap=True)
    views.stderr.print("Ctrl-C stops the console (the cluster keeps running)")
    with interrupted_by_signals():
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    return 0
