"""Group commit: concurrent writes share one durable LMDB commit.

Requests queue while a commit is in flight and all go into the next one, so the origin
is not capped at one fsync per write. A request is answered only after the commit that
holds it is on disk. If a batch fails because the map is full, its requests are retried
one per transaction so that one oversized write does not fail the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from edgepop.errors import StorageFullError
from edgepop.metrics import OriginMetrics
from edgepop.storage import Storage
from origin_node.writelog import WriteLog, WriteRequest

# Requests (not entries) per commit; a KvPutMany of 10,000 entries is one request.
BATCH_REQUESTS_MAX = 512


class Committer:
    def __init__(
        self,
        storage: Storage,
        log: WriteLog,
        metrics: OriginMetrics,
        on_commit: Callable[[int, int], None],
    ) -> None:
        self.storage = storage
        self.log = log
        self.metrics = metrics
        self.on_commit = on_commit
        self._queue: asyncio.Queue[tuple[WriteRequest, asyncio.Future[WriteRequest]]] = (
            asyncio.Queue()
        )

    async def submit(self, request: WriteRequest) -> WriteRequest:
        """Queue a write; returns it (with `seq` set) once it is durable."""
        future: asyncio.Future[WriteRequest] = asyncio.get_running_loop().create_future()
        await self._queue.put((request, future))
        return await future

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH_REQUESTS_MAX and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[WriteRequest, asyncio.Future[WriteRequest]]]) -> None:
        requests = [request for request, _ in batch]
        started = time.perf_counter()
        try:
            head, first = await self.storage.write(self._work(requests))
        except StorageFullError as error:
            if len(batch) > 1:
                for item in batch:
                    item[0].entries.clear()
                    await self._commit([item])
                return
            _fail(batch, error)
            return
        except Exception as error:
            _fail(batch, error)
            return
        self.metrics.kv_commits.inc()
        self.metrics.kv_commit_entries.observe(sum(len(r.entries) for r in requests))
        self.metrics.kv_commit_duration.observe(time.perf_counter() - started)
        self.on_commit(head, first)
        for request, future in batch:
            if future.done():
                continue
            if request.error is not None:
                future.set_exception(request.error)  # refused alone; the batch committed
            else:
                future.set_result(request)

    def _work(self, requests: list[WriteRequest]) -> Callable[[Any], tuple[int, int]]:
        def work(txn: Any) -> tuple[int, int]:
            return self.log.commit(txn, requests, time.time())

        return work


def _fail(
    batch: list[tuple[WriteRequest, asyncio.Future[WriteRequest]]], error: BaseException
) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(error)
