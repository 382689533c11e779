"""Assembles the scheduler: SchedulerService, health, reflection, signals."""

from __future__ import annotations

from lifeboat import config as config_module
from lifeboat.bootstrap import GrpcDaemon, ServiceSpec
from lifeboat.v1 import scheduler_pb2, scheduler_pb2_grpc
from scheduler.service import SchedulerServicer


def build(config: config_module.Config, listen: str) -> GrpcDaemon:
    """The daemon, not yet started; tests start it on port 0."""
    servicer = SchedulerServicer()  # type: ignore[abstract]  # RPCs answer UNIMPLEMENTED until their issue lands
    services = [
        ServiceSpec(
            scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name,
            lambda server: scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(
                servicer, server
            ),
        ),
    ]
    return GrpcDaemon("scheduler", listen, services)


async def serve(config: config_module.Config, listen: str) -> None:
    daemon = build(config, listen)
    await daemon.start()
    await daemon.run_until_signalled()
