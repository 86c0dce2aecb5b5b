"""A WebSocket chat through a Durable Object, written against Cloudflare's API.

One cluster of real processes (tokyo, london and sydney PoPs; the seed's delays on). The
worker hands each upgrade to one `ChatRoom` object (`stub.fetch(request)`); the object
accepts the server end with `ctx.acceptWebSocket` (the hibernation API) and broadcasts
from `webSocketMessage`. Clients connect over HTTP to the PoP of their own region, so
every socket but the owner's crosses the emulated WAN to the object's node.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edgectl.launcher import Cluster
from edgepop.topology import load_topology
from tests.integration.cli import cluster_up, edgectl_json, origin_and_pops, write_wrangler_worker
from tests.integration.kvclient import metric_value

pytestmark = [pytest.mark.cluster, pytest.mark.timing]

HOST = "chat.workers.dev"
REGIONS = ("tokyo", "london", "sydney")
MESSAGES_EACH = 5
RECEIVE_TIMEOUT_S = 20.0
# An emulated round trip is at least the matrix's (less a timer's early aim) and at most
# that plus this machine's own overhead.
RTT_TOLERANCE = 0.05
RTT_SLACK_MS = 100.0
# Objects hibernate after 1 s idle here (Cloudflare: about 10 s); the chat room keeps
# nothing in memory, so its test holds whether it hibernates between phases or not.
HIBERNATE_AFTER_S = 1.0
HIBERNATION_TIMEOUT_S = 15.0
# And an object with no connection is evicted after 2 s idle (Cloudflare: 70-140 s).
EVICT_IDLE_AFTER_S = 2.0
TOPOLOGY = origin_and_pops(
    *REGIONS,
    objects={"hibernate_after_s": HIBERNATE_AFTER_S, "evict_idle_after_s": EVICT_IDLE_AFTER_S},
)
ENTRY = """
import json
from urllib.parse import parse_qs, urlparse

from js import WebSocketPair, WebSocketRequestResponsePair
from workers import DurableObject, Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if urlparse(request.url).path == "/echo":
            # A socket the worker serves itself (no object): accept() and listeners.
            client, server = WebSocketPair.new().object_values()
            server.accept()
            server.addEventListener("message", lambda event: server.send(event.data.upper()))
            return Response(None, status=101, web_socket=client)
        if urlparse(request.url).path == "/sleepy":
            return await self.env.SLEEPY.getByName("nap").fetch(request)
        if urlparse(request.url).path == "/forgetful":
            return await self.env.FORGETFUL.getByName("idle").fetch(request)
        room = self.env.ROOMS.getByName("lobby")
        return await room.fetch(request)


class Sleepy(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.heard = 0  # in memory: gone when the object hibernates

    async def fetch(self, request):
        client, server = WebSocketPair.new().object_values()
        self.ctx.acceptWebSocket(server)
        server.serializeAttachment({"joined": "yes"})
        return Response(None, status=101, web_socket=client)

    async def webSocketMessage(self, ws, message):
        self.heard += 1
        stored = (await self.ctx.storage.get("heard") or 0) + 1
        await self.ctx.storage.put("heard", stored)
        ws.send(json.dumps({
            "in_memory": self.heard,
            "stored": stored,
            "attachment": ws.deserializeAttachment(),
            "sockets": len(self.ctx.getWebSockets()),
        }))


class Forgetful(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.calls = 0  # in memory: gone when the object is evicted

    async def fetch(self, request):
        self.calls += 1
        stored = (await self.ctx.storage.get("calls") or 0) + 1
        await self.ctx.storage.put("calls", stored)
        return Response.json({"in_memory": self.calls, "stored": stored})


class ChatRoom(DurableObject):
    async def fetch(self, request):
        if request.headers.get("Upgrade", "").lower() != "websocket":
            count = await self.ctx.storage.get("count") or 0
            sockets = len(self.ctx.getWebSockets())
            return Response.json({"count": count, "sockets": sockets})
        name = parse_qs(urlparse(request.url).query)["name"][0]
        client, server = WebSocketPair.new().object_values()
        self.ctx.acceptWebSocket(server, [name])
        server.serializeAttachment({"name": name})
        self.ctx.setWebSocketAutoResponse(WebSocketRequestResponsePair.new("ping", "pong"))
        return Response(None, status=101, web_socket=client)

    async def webSocketMessage(self, ws, message):
        sender = ws.deserializeAttachment()["name"]
        count = (await self.ctx.storage.get("count") or 0) + 1
        await self.ctx.storage.put("count", count)
        line = json.dumps({"n": count, "from": sender, "text": message})
        for other in self.ctx.getWebSockets():
            other.send(line)

    async def webSocketClose(self, ws, code, reason, wasClean):
        name = ws.deserializeAttachment()["name"]
        for other in self.ctx.getWebSockets():
            if other is not ws:
                other.send(json.dumps({"left": name, "code": code}))
"""
WRANGLER = {
    "name": "chat",
    "main": "src/entry.py",
    "durable_objects": {
        "bindings": [
            {"name": "ROOMS", "class_name": "ChatRoom"},
            {"name": "SLEEPY", "class_name": "Sleepy"},
            {"name": "FORGETFUL", "class_name": "Forgetful"},
        ]
    },
    "migrations": [{"tag": "v1", "new_classes": ["ChatRoom", "Sleepy", "Forgetful"]}],
}


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Path]]:
    directory = tmp_path_factory.mktemp("cf-ws")
    worker = write_wrangler_worker(directory / "chat", WRANGLER, ENTRY)
    with cluster_up(directory, TOPOLOGY, [worker]) as (cluster, _):
        yield cluster, directory


def owner_of(cluster: Cluster, data_dir: Path) -> str:
    """The region of the node that owns the chat room."""
    placements = edgectl_json(data_dir, "do", "placements", "--namespace", "chat.ChatRoom")
    (placed,) = placements
    return cluster.node(placed["owner"]).region


def url(cluster: Cluster, region: str, path: str) -> str:
    pop = next(node for node in cluster.by_role("pop") if node.region == region)
    return f"http://{pop.http_address}{path}"


def headers(region: str) -> dict[str, str]:
    # The user sits in the PoP's own region: the ingress emulates that short link.
    return {"Host": HOST, "x-edge-region": region}


async def receive_json(ws: aiohttp.ClientWebSocketResponse) -> Any:
    message = await asyncio.wait_for(ws.receive(), RECEIVE_TIMEOUT_S)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    return json.loads(message.data)


async def chat(cluster: Cluster, data_dir: Path) -> None:
    topology = load_topology(data_dir / "topology.yaml")
    async with aiohttp.ClientSession() as session:
        sockets = {
            region: await session.ws_connect(
                url(cluster, region, f"/room?name={region}"), headers=headers(region)
            )
            for region in REGIONS
        }

        async def talk(region: str) -> None:
            for index in range(MESSAGES_EACH):
                await sockets[region].send_str(f"{region} says {index}")

        await asyncio.gather(*(talk(region) for region in REGIONS))
        total = MESSAGES_EACH * len(REGIONS)
        heard = {
            region: [await receive_json(sockets[region]) for _ in range(total)]
            for region in REGIONS
        }

        # Everyone heard every message, in one order: the object's.
        orders = {
            region: [(m["n"], m["from"], m["text"]) for m in heard[region]] for region in REGIONS
        }
        assert orders["tokyo"] == orders["london"] == orders["sydney"]
        assert [n for n, _, _ in orders["tokyo"]] == list(range(1, total + 1))
        sent = {f"{region} says {index}" for region in REGIONS for index in range(MESSAGES_EACH)}
        assert {text for _, _, text in orders["tokyo"]} == sent
        for region in REGIONS:  # each sender's own messages stay in the order it sent them
            own = [text for _, sender, text in orders["tokyo"] if sender == region]
            assert own == [f"{region} says {index}" for index in range(MESSAGES_EACH)]

        # The automatic reply answers at the object's node without running it (nothing is
        # broadcast), after the emulated round trip: user -> PoP -> owner and back.
        owner_region = owner_of(cluster, data_dir)
        for region in REGIONS:
            started = time.perf_counter()
            await sockets[region].send_str("ping")
            answer = await asyncio.wait_for(sockets[region].receive(), RECEIVE_TIMEOUT_S)
            took_ms = (time.perf_counter() - started) * 1000
            assert answer.data == "pong"
            expected_ms = topology.rtt_ms(region, region, caller_is_node=False)
            if region != owner_region:
                expected_ms += topology.rtt_ms(region, owner_region, caller_is_node=True)
            assert expected_ms * (1 - RTT_TOLERANCE) <= took_ms <= expected_ms + RTT_SLACK_MS, (
                region,
                took_ms,
                expected_ms,
            )

        # A plain request through the same stub reaches the object's fetch.
        async with session.get(url(cluster, "sydney", "/count"), headers=headers("sydney")) as got:
            assert got.status == 200
            assert await got.json() == {"count": total, "sockets": len(REGIONS)}

        # A client that leaves reaches webSocketClose; the others hear of it.
        await sockets["sydney"].close(code=4001)
        for region in ("tokyo", "london"):
            assert await receive_json(sockets[region]) == {"left": "sydney", "code": 4001}
        for region in ("tokyo", "london"):
            await sockets[region].close()


def test_chat_through_a_durable_object_reaches_every_region_in_one_order(
    running: tuple[Cluster, Path],
) -> None:
    asyncio.run(chat(*running))


async def echo(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(url(cluster, "london", "/echo"), headers=headers("london"))
        for word in ("hello", "edge"):
            await ws.send_str(word)
            answer = await asyncio.wait_for(ws.receive(), RECEIVE_TIMEOUT_S)
            assert answer.data == word.upper()
        await ws.close()
        assert ws.close_code == 1000


def test_a_worker_serves_its_own_websocket(running: tuple[Cluster, Path]) -> None:
    asyncio.run(echo(running[0]))


async def refused(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as session:
        # No name: the object's fetch raises, the worker answers 1101, no socket opens.
        with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
            await session.ws_connect(url(cluster, "tokyo", "/room"), headers=headers("tokyo"))
        assert raised.value.status == 500


def test_an_upgrade_the_object_fails_is_an_error_not_a_socket(
    running: tuple[Cluster, Path],
) -> None:
    asyncio.run(refused(running[0]))


def hibernations(cluster: Cluster) -> float:
    return sum(
        metric_value(cluster, pop.name, "edge_do_hibernations_total")
        for pop in cluster.by_role("pop")
    )


async def nap(cluster: Cluster) -> None:
    # Counted from here: the chat room may have hibernated before, but it holds no socket
    # now (its test closed them all), so it cannot again.
    before = hibernations(cluster)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(url(cluster, "tokyo", "/sleepy"), headers=headers("tokyo"))
        for heard in (1, 2):
            await ws.send_str("hello")
            answer = await receive_json(ws)
            assert (answer["in_memory"], answer["stored"]) == (heard, heard)
        # Idle, holding only a hibernatable socket: it leaves memory, the socket stays.
        deadline = time.monotonic() + HIBERNATION_TIMEOUT_S
        while hibernations(cluster) <= before:
            assert time.monotonic() < deadline, "the object never hibernated"
            await asyncio.sleep(0.1)
        await ws.send_str("wake up")
        answer = await receive_json(ws)
        # A new object (its memory starts again), with its storage, socket and attachment.
        assert answer == {
            "in_memory": 1,
            "stored": 3,
            "attachment": {"joined": "yes"},
            "sockets": 1,
        }
        await ws.close()


def test_an_idle_object_holding_only_hibernatable_sockets_hibernates_and_wakes(
    running: tuple[Cluster, Path],
) -> None:
    asyncio.run(nap(running[0]))


def idle_evictions(cluster: Cluster, namespace: str) -> float:
    return sum(
        metric_value(cluster, pop.name, "edge_do_idle_evictions_total", {"namespace": namespace})
        for pop in cluster.by_role("pop")
    )


async def forget(cluster: Cluster) -> None:
    before = idle_evictions(cluster, "chat.Forgetful")
    async with aiohttp.ClientSession() as session:

        async def call() -> Any:
            async with session.get(
                url(cluster, "london", "/forgetful"), headers=headers("london")
            ) as response:
                assert response.status == 200, await response.text()
                return await response.json()

        assert await call() == {"in_memory": 1, "stored": 1}
        assert await call() == {"in_memory": 2, "stored": 2}
        # Idle, with no connection: evicted from memory, as Cloudflare does.
        deadline = time.monotonic() + HIBERNATION_TIMEOUT_S
        while idle_evictions(cluster, "chat.Forgetful") <= before:
            assert time.monotonic() < deadline, "the idle object was never evicted"
            await asyncio.sleep(0.1)
        # Constructed again: its memory starts over, its storage is all there.
        assert await call() == {"in_memory": 1, "stored": 3}


def test_an_idle_object_with_no_connection_is_evicted_and_its_next_call_constructs_it(
    running: tuple[Cluster, Path],
) -> None:
    asyncio.run(forget(running[0]))
