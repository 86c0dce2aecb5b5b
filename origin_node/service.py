"""gRPC servicer of the origin: thin wiring over the store, the committer and the stream."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from edge.v1 import kv_pb2, origin_pb2, sql_pb2
from edge.v1 import origin_pb2_grpc as pb_grpc
from edgepop import kvapi
from edgepop.rpc import RpcEnv, rpc
from origin_node.writelog import Change, WriteRequest

if TYPE_CHECKING:
    from origin_node.node import OriginNode


class OriginService(pb_grpc.OriginServicer):
    def __init__(self, node: OriginNode) -> None:
        self.node = node
        self.store = node.store
        self.rpc_env = RpcEnv("Origin", node.metrics, node.netem, node.token)

    # -- reads (authoritative) ----------------------------------------------------------

    @rpc()
    async def KvGet(
        self, request: kv_pb2.KvGetRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.KvGetResponse:
        key = kvapi.validate_get(request)
        now = time.time()
        with self.node.storage.read() as txn:
            head, _ = self.node.log.positions(txn)
            record = self.store.get(txn, request.namespace, key, now)
        return kvapi.get_response(record, head)

    @rpc()
    async def KvGetMany(
        self, request: kv_pb2.KvGetManyRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.KvGetManyResponse:
        keys = kvapi.validate_get_many(request)
        now = time.time()
        response = kv_pb2.KvGetManyResponse()
        with self.node.storage.read() as txn:
            response.applied_seq, _ = self.node.log.positions(txn)
            for text, key in zip(request.keys, keys, strict=True):
                record = self.store.get(txn, request.namespace, key, now)
                response.results.append(kvapi.get_many_result(text, record))
        return response

    @rpc()
    async def KvList(
        self, request: kv_pb2.KvListRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.KvListResponse:
        prefix, start_after, limit = kvapi.validate_list(request)
        with self.node.storage.read() as txn:
            records, more = self.store.list_range(
                txn, request.namespace, prefix, start_after, limit, time.time()
            )
        return kvapi.list_response(records, more)

    # -- writes (durable before the reply) ----------------------------------------------

    @rpc()
    async def KvPut(
        self, request: kv_pb2.KvPutRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.KvPutResponse:
        expiration = kvapi.validate_put(request, time.time())
        change = Change(
            kv_pb2.LOG_OP_PUT,
            request.key,
            request.value,
            request.metadata_json,
            expiration,
            if_seq=request.if_seq if request.HasField("if_seq") else None,
        )
        done = await self.node.committer.submit(
            WriteRequest(request.namespace, [change], request.request_id)
        )
        return kv_pb2.KvPutResponse(seq=done.seq)

    @rpc()
    async def KvPutMany(
        self, request: kv_pb2.KvPutManyRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.KvPutManyResponse:
        expirations = kvapi.validate_put_many(request, time.time())
        changes = [
            Change(kv_pb2.LOG_OP_PUT, entry.key, entry.value, entry.metadata_json, expiration)
            for entry, expiration in zip(request.entries, expirations, strict=True)
        ]
        done = await self.node.committer.submit(
            WriteRequest(request.namespace, changes, request.request_id)
        )
        return kv_pb2.KvPutManyResponse(seq=done.seq)

    @rpc()
    async def KvDelete(
        self, request: kv_pb2.KvDeleteRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.KvDeleteResponse:
        kvapi.validate_delete(request)
        done = await self.node.committer.submit(
            WriteRequest(
                request.namespace, [Change(kv_pb2.LOG_OP_DELETE, request.key)], request.request_id
            )
        )
        return kv_pb2.KvDeleteResponse(seq=done.seq)

    # -- replication and admin ----------------------------------------------------------

    @rpc(internal=True)
    async def Subscribe(
        self, request: origin_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[origin_pb2.SubscribeResponse | bytes]:
        self.node.subscribers += 1
        self.node.metrics.kv_subscribers.set(self.node.subscribers)
        try:
            async for message in self.node.stream.messages(request.from_seq):
                if not isinstance(message, bytes) and message.snapshot.last:
                    self.node.metrics.kv_snapshots.inc()
                yield message
        finally:
            self.node.subscribers -= 1
            self.node.metrics.kv_subscribers.set(self.node.subscribers)

    @rpc(internal=True)
    async def Dump(
        self, request: kv_pb2.DumpRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[kv_pb2.DumpChunk]:
        with self.node.storage.read() as txn:
            head, _ = self.node.log.positions(txn)
            for chunk in kvapi.dump_chunks(self.store.iter_records(txn), head):
                yield chunk

    @rpc()
    async def Status(
        self, request: origin_pb2.OriginStatusRequest, context: grpc.aio.ServicerContext
    ) -> origin_pb2.OriginStatusResponse:
        with self.node.storage.read() as txn:
            head, first = self.node.log.positions(txn)
        return origin_pb2.OriginStatusResponse(
            node=self.node.name,
            region=self.node.region,
            head_seq=head,
            log_first_seq=first,
            subscribers=self.node.subscribers,
            requests=self.node.metrics.request_totals.to_proto(),
        )

    # -- SQL databases (the primaries) ---------------------------------------------------------

    @rpc()
    async def SqlCreate(
        self, request: sql_pb2.SqlCreateRequest, context: grpc.aio.ServicerContext
    ) -> sql_pb2.SqlCreateResponse:
        return await self.node.sql.create(request.name)

    @rpc()
    async def SqlList(
        self, request: sql_pb2.SqlListRequest, context: grpc.aio.ServicerContext
    ) -> sql_pb2.SqlListResponse:
        return sql_pb2.SqlListResponse(databases=self.node.sql.catalog())

    @rpc()
    async def SqlQuery(
        self, request: sql_pb2.SqlQueryRequest, context: grpc.aio.ServicerContext
    ) -> sql_pb2.SqlQueryResponse:
        return await self.node.sql.query(request)

    @rpc(internal=True)
    async def SqlDump(
        self, request: sql_pb2.SqlDumpRequest, context: grpc.aio.ServicerContext
    ) -> sql_pb2.SqlDumpResponse:
        return await self.node.sql.dump(request.database)
