"""Assembles the scheduler: the fleet scheduler, SchedulerService, health, reflection, signals."""

from __future__ import annotations

from lifeboat import config as config_module
from lifeboat.bootstrap import GrpcDaemon, ServiceSpec
from lifeboat.clock import SYSTEM, Clock
from lifeboat.security import daemon_identity, guard_for
from lifeboat.v1 import scheduler_pb2, scheduler_pb2_grpc
from scheduler.fleet import Scheduler
from scheduler.hosts import HostClientFactory
from scheduler.remote import grpc_clients
from scheduler.service import SchedulerServicer
from scheduler.settings import SchedulerSettings


def build(
    config: config_module.Config,
    listen: str,
    settings: SchedulerSettings | None = None,
    clients: HostClientFactory | None = None,
    clock: Clock = SYSTEM,
) -> tuple[GrpcDaemon, Scheduler]:
    """The daemon and its scheduler, neither started; tests start them on port 0 (and may
    give them a clock they turn by hand)."""
    settings = settings or SchedulerSettings()
    section = config.scheduler_security
    guard = guard_for(config, section, listen, ("scheduler.listen", config.scheduler_listen))
    identity = daemon_identity(config, section)
    scheduler = Scheduler(config, clients or grpc_clients(settings, identity), settings, clock)
    servicer = SchedulerServicer(scheduler)

    async def reload() -> None:
        await scheduler.reload()

    services = [
        ServiceSpec(
            scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name,
            lambda server: scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(
                servicer, server
            ),
        ),
    ]
    daemon = GrpcDaemon(
        "scheduler",
        listen,
        services,
        on_reload=reload,
        on_stop=scheduler.stop,
        guard=guard,
        section=lambda new: new.scheduler_security,
        config_path=config.path,
    )
    scheduler.on_apply = daemon.reload_security
    return daemon, scheduler


async def serve(config: config_module.Config, listen: str) -> None:
    daemon, scheduler = build(config, listen)
    await daemon.start()
    scheduler.start()
    await daemon.run_until_signalled()
