"""A Cloudflare Python Worker with its own packages: a FastAPI app through `asgi`.

The worker's pyproject.toml lists fastapi. `edgectl cluster up --workers` installs it
(from the package registry, into a directory of this test: `EDGEPOP_WORKER_ENVS`) before
deploying, every PoP loads the worker with it, and the app answers at each PoP's ingress.
A package that cannot be had fails `edgectl deploy` with pip's reason. Downloads on a
machine whose pip cache is cold: about 20 s.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgectl.launcher import Cluster
from edgepop import packages
from tests.integration.cli import cluster_up, edgectl, origin_and_pops, write_wrangler_worker

pytestmark = pytest.mark.cluster

HOST = "fastapi-app.workers.dev"
TOPOLOGY = origin_and_pops("tokyo", "london")
DEPENDENCIES = ["fastapi>=0.110"]
ENTRY = """
from fastapi import FastAPI, Request
from pydantic import BaseModel
from workers import WorkerEntrypoint

import asgi

app = FastAPI()


class Item(BaseModel):
    name: str
    price: float


@app.get("/hello/{name}")
async def hello(name: str, request: Request):
    env = request.scope["env"]
    return {"message": f"{env.GREETING}, {name}", "colo": request.headers.get("x-where")}


@app.post("/items")
async def create(item: Item):
    return {"received": item.name, "with_tax": round(item.price * 1.2, 2)}


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await asgi.fetch(app, request.js_object, self.env)
"""
WRANGLER = {"name": "fastapi-app", "main": "src/entry.py", "vars": {"GREETING": "Hello"}}


def write_pyproject(folder: Path, dependencies: list[str]) -> None:
    (folder / "pyproject.toml").write_text(
        f'[project]\nname = "{folder.name}"\nversion = "0.1.0"\n'
        f"dependencies = {json.dumps(dependencies)}\n"
    )


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Path]]:
    directory = tmp_path_factory.mktemp("cf-packages")
    worker = write_wrangler_worker(directory / "fastapi-app", WRANGLER, ENTRY)
    write_pyproject(worker, DEPENDENCIES)
    with pytest.MonkeyPatch.context() as patch:
        # edgectl and every node it starts install into (and read from) this test's dir.
        patch.setenv(packages.ENVS_DIR_ENV, str(directory / "envs"))
        with cluster_up(directory, TOPOLOGY, [worker]) as (cluster, started):
            assert "installed fastapi-app's packages" in started
            yield cluster, directory


def call(cluster: Cluster, node: str, path: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://{cluster.node(node).http_address}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Host": HOST, "Content-Type": "application/json", "x-where": node},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_fastapi_worker_with_its_own_packages_serves_at_every_pop(
    running: tuple[Cluster, Path],
) -> None:
    cluster, directory = running
    assert packages.is_installed(DEPENDENCIES, directory / "envs")
    for pop in cluster.by_role("pop"):
        status, answer = call(cluster, pop.name, "/hello/ada")
        assert status == 200
        assert answer == {"message": "Hello, ada", "colo": pop.name}
        status, answer = call(cluster, pop.name, "/items", {"name": "tea", "price": 2.5})
        assert (status, answer) == (200, {"received": "tea", "with_tax": 3.0})
        # FastAPI's own validation answers a bad body.
        status, answer = call(cluster, pop.name, "/items", {"name": "tea"})
        assert status == 422
        assert answer["detail"][0]["loc"] == ["body", "price"]


def test_a_package_that_cannot_be_had_fails_the_deploy_and_changes_nothing(
    running: tuple[Cluster, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, directory = running
    worker = write_wrangler_worker(
        directory / "needs-missing",
        {"name": "needs-missing", "main": "src/entry.py"},
        "from workers import Response\n\nasync def on_fetch(request, env):\n"
        "    return Response('never')\n",
    )
    write_pyproject(worker, ["edgepop-no-such-package-4f2c"])
    monkeypatch.setenv(packages.ENVS_DIR_ENV, str(directory / "envs"))
    result = edgectl(directory, "deploy", str(worker))
    assert result.returncode != 0
    assert "edgepop-no-such-package-4f2c" in result.stderr
    assert "cannot install" in result.stderr
    listed = edgectl(directory, "workers", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [worker["name"] for worker in json.loads(listed.stdout)] == ["fastapi-app"]
