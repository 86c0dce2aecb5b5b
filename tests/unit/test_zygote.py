"""What the zygote preloads, and so what every node it forks carries in its RSS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Libraries one process (the origin's JWT signing) or one kind of cluster (TLS) needs.
NOT_SHARED = ("cryptography", "jwt", "origin_node")


def _preloaded_modules(tls: bool) -> set[str]:
    """The top-level packages loaded after the zygote's preload, in a fresh interpreter."""
    script = (
        "import importlib, json, sys\n"
        "from edgectl import zygote\n"
        f"extra = zygote.PRELOADED_FOR_TLS if {tls} else ()\n"
        "for module in (*zygote.PRELOADED, *extra):\n"
        "    importlib.import_module(module)\n"
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return set(json.loads(output.splitlines()[-1]))


@pytest.fixture(scope="module")
def plain_preload() -> set[str]:
    return _preloaded_modules(tls=False)


def test_a_cluster_without_tls_preloads_no_library_only_one_process_needs(
    plain_preload: set[str],
) -> None:
    assert not plain_preload & set(NOT_SHARED)


def test_the_preload_holds_what_every_node_shares(plain_preload: set[str]) -> None:
    for shared in ("grpc", "aiohttp", "lmdb", "prometheus_client", "pop_node", "pydantic"):
        assert shared in plain_preload, shared


def test_a_tls_cluster_preloads_the_certificate_checks() -> None:
    assert "cryptography" in _preloaded_modules(tls=True)
