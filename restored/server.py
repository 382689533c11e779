"""Assembles restored: RestoreService, OperationService, health, reflection, signals."""

from __future__ import annotations

import asyncio

from lifeboat import config as config_module
from lifeboat.bootstrap import GrpcDaemon, ServiceSpec
from lifeboat.operation_service import operation_service
from lifeboat.operations import OperationRegistry
from lifeboat.v1 import restore_pb2, restore_pb2_grpc
from restored.service import RestoreServicer


def build(config: config_module.Config, host: str, listen: str) -> GrpcDaemon:
    """The daemon, not yet started; tests start it on port 0."""
    registry = OperationRegistry(host)
    registry.bind_loop(asyncio.get_running_loop())
    servicer = RestoreServicer()  # type: ignore[abstract]  # RPCs answer UNIMPLEMENTED until their issue lands
    services = [
        ServiceSpec(
            restore_pb2.DESCRIPTOR.services_by_name["RestoreService"].full_name,
            lambda server: restore_pb2_grpc.add_RestoreServiceServicer_to_server(servicer, server),
        ),
        operation_service(registry),
    ]
    return GrpcDaemon("restored", listen, services)


async def serve(config: config_module.Config, host: str, listen: str) -> None:
    daemon = build(config, host, listen)
    await daemon.start()
    await daemon.run_until_signalled()
