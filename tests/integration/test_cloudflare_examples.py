"""Cloudflare's own Python Workers examples, deployed unmodified, answering at every PoP.

The folders are read from `../shared/cf-examples/` (tests/cf_examples.py), never copied.
One cluster of real processes (tokyo, london and sydney PoPs, the seed's delays on),
started by `edgectl cluster up --detach --workers DIR...` as a user would, each example
deployed from its own folder; requests go over HTTP to each PoP's ingress with the
worker's `NAME.workers.dev` Host header, as on Cloudflare's workers.dev subdomain.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from edgectl.launcher import Cluster
from tests.cf_examples import cf_example
from tests.integration.cli import cluster_up, edgectl, origin_and_pops
from tests.integration.workerclient import http_get

pytestmark = pytest.mark.cluster

TOPOLOGY = origin_and_pops("tokyo", "london", "sydney")
POPS = ("tokyo-1", "london-1", "sydney-1")
EXAMPLES = ("01-hello", "02-binding", "04-query-d1", "07-durable-objects")
HTTP_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # Two of them by `cluster up --workers`, two by `edgectl deploy DIR` into the running
    # cluster: a user's two ways in, from the examples' own folders.
    at_start, deployed_later = EXAMPLES[:2], EXAMPLES[2:]
    folders = [cf_example(name) for name in at_start]
    with cluster_up(tmp_path_factory.mktemp("cf-examples"), TOPOLOGY, folders) as (
        cluster,
        started,
    ):
        for name in ("hello-python", "hello-python-bindings"):
            assert f"deployed {name} " in started, started
        for example, name in zip(
            deployed_later, ("python-d1", "python-durable-object"), strict=True
        ):
            result = edgectl(cluster.data_dir, "deploy", str(cf_example(example)))
            assert result.returncode == 0, result.stderr
            assert name in result.stdout + result.stderr
        yield cluster


def get(cluster: Cluster, node: str, worker: str, path: str = "/") -> tuple[int, str]:
    return http_get(
        cluster.node(node).http_address, f"{worker}.workers.dev", path, timeout_s=HTTP_TIMEOUT_S
    )


def test_hello_answers_at_every_pop(cluster: Cluster) -> None:
    for node in POPS:
        assert get(cluster, node, "hello-python") == (200, "Hello world!")


def test_the_kv_binding_example_writes_and_reads_back_at_every_pop(cluster: Cluster) -> None:
    # Each request puts "baz" through the origin and reads it back at its own PoP: the
    # write is read at once there (read-your-writes at one PoP), whatever the region.
    for node in POPS:
        assert get(cluster, node, "hello-python-bindings") == (200, "baz")


def test_the_durable_object_list_is_one_list_from_every_region(cluster: Cluster) -> None:
    worker = "python-durable-object"
    assert get(cluster, "sydney-1", worker, "/groceries/show") == (200, "No messages")
    for node, item in (("tokyo-1", "rice"), ("london-1", "tea"), ("sydney-1", "lamingtons")):
        assert get(cluster, node, worker, f"/groceries/add/{item}") == (200, "Message sent")
    for node in POPS:
        assert get(cluster, node, worker, "/groceries/show") == (200, "rice\ntea\nlamingtons")
    # Another name is another object; the example's own answers for other paths.
    assert get(cluster, "london-1", worker, "/chores/show") == (200, "No messages")
    status, text = get(cluster, "tokyo-1", worker, "/")
    assert status == 400 and text.startswith("Go to /<list_id>/show")
    assert get(cluster, "tokyo-1", worker, "/groceries/other") == (404, "Not Found")


def test_the_d1_example_answers_a_quote_from_every_pop(cluster: Cluster) -> None:
    # As its README says: create the database, apply db_init.sql, then query.
    example = cf_example("04-query-d1")
    created = edgectl(cluster.data_dir, "d1", "create", "quotes")
    assert created.returncode == 0, created.stderr
    applied = edgectl(
        cluster.data_dir, "d1", "execute", "quotes", "--file", str(example / "db_init.sql")
    )
    assert applied.returncode == 0, applied.stderr
    authors = {"Hood Chatham", "Dominik Picheta", "Wikipedia"}
    for node in POPS:
        status, text = get(cluster, node, "python-d1")
        assert status == 200, text
        quote = json.loads(text)
        assert set(quote) == {"quote", "author"} and quote["author"] in authors
