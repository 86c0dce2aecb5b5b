"""gRPC servicer of a PoP: thin wiring over the KV frontend, objects and status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from edge.v1 import kv_pb2, objects_pb2, pop_pb2, sql_pb2
from edge.v1 import pop_pb2_grpc as pb_grpc
from edgepop import kvapi, objectid
from edgepop.netem import Caller, caller_from_metadata
from edgepop.rpc import RpcEnv, rpc
from pop_node import replica
from pop_node.objects.sessions import serve_session

if TYPE_CHECKING:
    from pop_node.node import PopNode

# Objects a Status names (the busiest): enough for a console's table, and a bound on the
# reply of a PoP that hosts many thousands.
STATUS_OBJECTS_MAX = 256


class PopService(pb_grpc.PopServicer):
    def __init__(self, node: PopNode) -> None:
        self.node = node
        self.store = node.store
        self.kv = node.kv
        self.rpc_env = RpcEnv("Pop", node.metrics, node.netem, node.token)

    # -- KV ----------------------------------------------------------------------------------

    @rpc()
    async def KvGet(
        self, request: kv_pb2.KvGetRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.KvGetResponse:
        return await self.kv.get(request, context.time_remaining())

    @rpc()
    async def KvGetMany(
        self, request: kv_pb2.KvGetManyRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.KvGetManyResponse:
        return await self.kv.get_many(request, context.time_remaining())

    @rpc()
    async def KvList(
        self, request: kv_pb2.KvListRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.KvListResponse:
        return await self.kv.list(request, context.time_remaining())

    @rpc()
    async def KvPut(
        self, request: kv_pb2.KvPutRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.KvPutResponse:
        return await self.kv.put(request, context.time_remaining())

    @rpc()
    async def KvPutMany(
        self, request: kv_pb2.KvPutManyRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.KvPutManyResponse:
        return await self.kv.put_many(request, context.time_remaining())

    @rpc()
    async def KvDelete(
        self, request: kv_pb2.KvDeleteRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.KvDeleteResponse:
        return await self.kv.delete(request, context.time_remaining())

    # -- status and admin ------------------------------------------------------------------

    @rpc()
    async def Status(
        self, request: pop_pb2.PopStatusRequest, context: grpc.aio.ServicerContext
    ) -> pop_pb2.PopStatusResponse:
        replication = self.node.replication
        return pop_pb2.PopStatusResponse(
            node=self.node.name,
            region=self.node.region,
            applied_seq=replication.applied_seq,
            origin_head_seq=replication.origin_head_seq,
            lag_seconds=replication.lag_seconds(),
            replicating=replication.connected,
            overlay_entries=len(self.node.overlay),
            workers=self.node.workers.loaded(),
            http_address=self.node.http_address,
            requests=self.node.metrics.request_totals.to_proto(),
            objects=[
                pop_pb2.ObjectCalls(
                    namespace=instance.namespace, id=instance.object_id.hex(), calls=instance.calls
                )
                for instance in self.node.objects.busiest(STATUS_OBJECTS_MAX)
            ],
        )

    @rpc(internal=True)
    async def Dump(
        self, request: kv_pb2.DumpRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[kv_pb2.DumpChunk]:
        with self.node.storage.read() as txn:
            applied_seq, _ = replica.read_position(self.store, txn)
            for chunk in kvapi.dump_chunks(self.store.iter_records(txn), applied_seq):
                yield chunk

    # -- Durable Objects -------------------------------------------------------------------

    @rpc(with_caller=True)
    async def ObjectCall(
        self,
        request: objects_pb2.ObjectCallRequest,
        context: grpc.aio.ServicerContext,
        caller: Caller | None,
    ) -> objects_pb2.ObjectCallResponse:
        return await self.node.router.call(
            request,
            caller_region=caller.region if caller is not None else "",
            time_remaining=context.time_remaining(),
        )

    @rpc(bidi=True)
    async def ObjectConnect(
        self,
        request_iterator: AsyncIterator[objects_pb2.ObjectClientMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[objects_pb2.ObjectServerMessage]:
        caller = caller_from_metadata(context.invocation_metadata())
        async for message in serve_session(
            self.node.router,
            self.node.objects,
            request_iterator,
            caller.region if caller is not None else "",
        ):
            yield message

    @rpc()
    async def ObjectId(
        self, request: objects_pb2.ObjectIdRequest, context: grpc.aio.ServicerContext
    ) -> objects_pb2.ObjectIdResponse:
        self.node.objects.class_of(request.namespace)  # NOT_FOUND: no class, no ids
        if request.name and request.id:
            object_id = objectid.resolve(request.namespace, request.name, request.id)
        elif request.name:
            object_id = objectid.id_from_name(request.namespace, request.name)
        elif request.id:
            object_id = objectid.id_from_string(request.namespace, request.id)
        else:
            object_id = objectid.new_unique_id(request.namespace)
        return objects_pb2.ObjectIdResponse(id=object_id.hex())

    @rpc(internal=True, bidi=True)
    async def ObjectReplicate(
        self,
        request_iterator: AsyncIterator[objects_pb2.ObjectReplicateRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[objects_pb2.ObjectReplicateResponse]:
        async for response in self.node.objects.serve_replica_stream(request_iterator):
            yield response

    # -- SQL databases -------------------------------------------------------------------------

    @rpc()
    async def SqlQuery(
        self, request: sql_pb2.SqlQueryRequest, context: grpc.aio.ServicerContext
    ) -> sql_pb2.SqlQueryResponse:
        return await self.node.sql.query(request, context.time_remaining())

    @rpc()
    async def SqlList(
        self, request: sql_pb2.SqlListRequest, context: grpc.aio.ServicerContext
    ) -> sql_pb2.SqlListResponse:
        return sql_pb2.SqlListResponse(databases=await self.node.sql.catalog())

    @rpc(internal=True)
    async def SqlDump(
        self, request: sql_pb2.SqlDumpRequest, context: grpc.aio.ServicerContext
    ) -> sql_pb2.SqlDumpResponse:
        return await self.node.sql.dump(request.database)
