"""Assembles the monitor: MonitorService, health, reflection, signals."""

from __future__ import annotations

from lifeboat import config as config_module
from lifeboat.bootstrap import GrpcDaemon, ServiceSpec
from lifeboat.v1 import monitor_pb2, monitor_pb2_grpc
from monitor.service import MonitorServicer


def build(config: config_module.Config, listen: str) -> GrpcDaemon:
    """The daemon, not yet started; tests start it on port 0."""
    servicer = MonitorServicer()  # type: ignore[abstract]  # RPCs answer UNIMPLEMENTED until their issue lands
    services = [
        ServiceSpec(
            monitor_pb2.DESCRIPTOR.services_by_name["MonitorService"].full_name,
            lambda server: monitor_pb2_grpc.add_MonitorServiceServicer_to_server(servicer, server),
        ),
    ]
    return GrpcDaemon("monitor", listen, services)


async def serve(config: config_module.Config, listen: str) -> None:
    daemon = build(config, listen)
    await daemon.start()
    await daemon.run_until_signalled()
