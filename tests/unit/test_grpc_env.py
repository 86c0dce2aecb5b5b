"""A node's gRPC settings: set before grpc loads, and never over a user's own."""

from __future__ import annotations

import os
import subprocess
import sys

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
