"""A node's gRPC settings: set before grpc loads, and never over a user's own."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from bench.echo import ECHO_METHOD, EchoServer
from edgepop.grpc_env import GRPC_EXPERIMENTS_ENV, NODE_GRPC_EXPERIMENTS, use_node_defaults


def test_sets_the_node_experiments_when_the_environment_names_none() -> None:
    environ: dict[str, str] = {}
    use_node_defaults(environ)
    assert environ[GRPC_EXPERIMENTS_ENV] == NODE_GRPC_EXPERIMENTS


def test_keeps_the_users_own_experiments() -> None:
    environ = {GRPC_EXPERIMENTS_ENV: "-tcp_rcv_lowat"}
    assert use_node_defaults(environ) is False
    assert environ[GRPC_EXPERIMENTS_ENV] == "-tcp_rcv_lowat"


def test_a_role_package_sets_them_before_its_modules_import_grpc() -> None:
    # A fresh interpreter, as `python -m pop_node` and the zygote are: importing the
    # role's main module must leave grpc loaded with the node setting in force.
    env = {key: value for key, value in os.environ.items() if key != GRPC_EXPERIMENTS_ENV}
    probe = (
        "import sys; assert 'grpc' not in sys.modules; "
        "import pop_node.__main__, os; "
        "assert 'grpc._cython.cygrpc' in sys.modules; "
        f"print(os.environ[{GRPC_EXPERIMENTS_ENV!r}])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == NODE_GRPC_EXPERIMENTS


def test_the_bench_echo_baseline_runs_with_the_node_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The echo is what KvGet and the object calls are compared with: the same runtime,
    # so a ratio measures edgepop's own code, not a different gRPC transport.
    monkeypatch.delenv(GRPC_EXPERIMENTS_ENV, raising=False)
    echo = EchoServer()
    echo.start()
    try:
        environ = Path(f"/proc/{echo.pid}/environ").read_bytes().split(b"\0")
        assert f"{GRPC_EXPERIMENTS_ENV}={NODE_GRPC_EXPERIMENTS}".encode() in environ

        async def call() -> bytes:
            async with grpc.aio.insecure_channel(echo.address) as channel:
                reply: bytes = await channel.unary_unary(ECHO_METHOD)(b"ping", timeout=10)
                return reply

        assert asyncio.run(call()) == b"ping"
    finally:
        echo.stop()
