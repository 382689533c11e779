"""Assembles the monitor: poller, MonitorService, HTTP /check and /metrics, health, signals."""

from __future__ import annotations

import asyncio

from lifeboat import config as config_module
from lifeboat.bootstrap import GrpcDaemon, ServiceSpec
from lifeboat.clock import SYSTEM, Clock
from lifeboat.security import daemon_identity, guard_for
from lifeboat.v1 import monitor_pb2, monitor_pb2_grpc
from monitor.core import Monitor
from monitor.rpc import GrpcSource
from monitor.service import MonitorServicer


def build(
    config: config_module.Config,
    listen: str,
    http_listen: str | None = None,
    clock: Clock = SYSTEM,
) -> tuple[GrpcDaemon, Monitor]:
    """The daemon and the monitor, not yet started; tests start them on port 0 (and may
    give them a clock they turn by hand).

    Start the daemon, then `await monitor.start()` (HTTP and polling); stopping the
    daemon stops the monitor.
    """
    section = config.monitor_security
    guard = guard_for(config, section, listen, ("monitor.listen", config.monitor_listen))
    source = GrpcSource(daemon_identity(config, section), clock)
    monitor = Monitor(config, source, http_listen or config.monitor_http, clock)
    servicer = MonitorServicer(monitor)
    path = config.path

    async def reload() -> None:
        new = await asyncio.to_thread(config_module.load, path)
        monitor.reconfigure(new)
        await asyncio.to_thread(daemon.reload_security, new)

    services = [
        ServiceSpec(
            monitor_pb2.DESCRIPTOR.services_by_name["MonitorService"].full_name,
            lambda server: monitor_pb2_grpc.add_MonitorServiceServicer_to_server(servicer, server),
        ),
    ]
    daemon = GrpcDaemon(
        "monitor",
        listen,
        services,
        on_reload=reload,
        on_stop=monitor.stop,
        guard=guard,
        section=lambda new: new.monitor_security,
        config_path=path,
    )
    return daemon, monitor


async def serve(config: config_module.Config, listen: str, http_listen: str | None = None) -> None:
    daemon, monitor = build(config, listen, http_listen)
    await daemon.start()
    try:
        await monitor.start()
    except BaseException:
        await daemon.stop(grace=0)
        raise
    await daemon.run_until_signalled()
