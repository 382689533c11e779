"""OperationService glue, served by backupd and restored over their own registries."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from lifeboat import convert
from lifeboat.bootstrap import ServiceSpec
from lifeboat.errors import InvalidArgument
from lifeboat.operations import OperationRegistry
from lifeboat.v1 import operations_pb2 as ops_pb
from lifeboat.v1 import operations_pb2_grpc as ops_grpc


def _required_name(name: str) -> str:
    if not name:
        raise InvalidArgument("name", "the operation name is required")
    return name


class OperationServicer(ops_grpc.OperationServiceServicer):
    def __init__(self, registry: OperationRegistry) -> None:
        self.registry = registry

    async def GetOperation(
        self, request: ops_pb.GetOperationRequest, context: grpc.aio.ServicerContext
    ) -> ops_pb.GetOperationResponse:
        record = self.registry.get(_required_name(request.name))
        return ops_pb.GetOperationResponse(operation=convert.operation_to_pb(record))

    async def ListOperations(
        self, request: ops_pb.ListOperationsRequest, context: grpc.aio.ServicerContext
    ) -> ops_pb.ListOperationsResponse:
        records = self.registry.select(
            job=request.job,
            running_only=request.running_only,
            kind=convert.operation_kind_from_pb(request.kind),
        )
        return ops_pb.ListOperationsResponse(
            operations=[convert.operation_to_pb(r) for r in records]
        )

    async def WatchOperation(
        self, request: ops_pb.WatchOperationRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ops_pb.WatchOperationResponse]:
        async for record in self.registry.watch(_required_name(request.name)):
            yield ops_pb.WatchOperationResponse(operation=convert.operation_to_pb(record))

    async def CancelOperation(
        self, request: ops_pb.CancelOperationRequest, context: grpc.aio.ServicerContext
    ) -> ops_pb.CancelOperationResponse:
        record = self.registry.cancel(_required_name(request.name))
        return ops_pb.CancelOperationResponse(operation=convert.operation_to_pb(record))


def operation_service(registry: OperationRegistry) -> ServiceSpec:
    servicer = OperationServicer(registry)
    return ServiceSpec(
        ops_pb.DESCRIPTOR.services_by_name["OperationService"].full_name,
        lambda server: ops_grpc.add_OperationServiceServicer_to_server(servicer, server),
    )
