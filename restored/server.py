"""Assembles restored: RestoreService, OperationService, health, reflection, signals."""

from __future__ import annotations

import asyncio

from lifeboat import config as config_module
from lifeboat.bootstrap import GrpcDaemon, ServiceSpec, audit_to_job_log
from lifeboat.operation_service import operation_service
from lifeboat.operations import OperationRegistry
from lifeboat.security import guard_for
from lifeboat.v1 import restore_pb2, restore_pb2_grpc
from restored.service import RestoreServicer
from restored.worker import RestoreSettings, RestoreWorker


def restore_settings(config: config_module.Config, host: str) -> RestoreSettings:
    host_config = config.host(host)
    return RestoreSettings(
        host=host,
        base_dir=host_config.base_dir,
        restore_limit=host_config.restore_limit,
        restore_targets=host_config.restore_targets,
        stream_limit=host_config.stream_limit,
        stream_idle_timeout=host_config.stream_idle_timeout,
        jobs={job.name: job for job in config.jobs_on(host)},
        restore_within=config.global_.restore_within,
    )


def build(config: config_module.Config, host: str, listen: str) -> tuple[GrpcDaemon, RestoreWorker]:
    """The daemon, not yet started; tests start it on port 0."""
    registry = OperationRegistry(host)
    registry.bind_loop(asyncio.get_running_loop())
    worker = RestoreWorker(restore_settings(config, host), registry)
    worker.recover_interrupted()
    servicer = RestoreServicer(worker)
    path = config.path
    host_config = config.host(host)
    guard = guard_for(
        config, host_config.security, listen, (f"hosts.{host}.restored", host_config.restored)
    )

    async def reload() -> None:
        new = await asyncio.to_thread(config_module.load, path)
        worker.reconfigure(restore_settings(new, host))
        daemon.reload_security(new)

    async def stop() -> None:
        await asyncio.to_thread(worker.shutdown)

    services = [
        ServiceSpec(
            restore_pb2.DESCRIPTOR.services_by_name["RestoreService"].full_name,
            lambda server: restore_pb2_grpc.add_RestoreServiceServicer_to_server(servicer, server),
        ),
        operation_service(registry),
    ]
    daemon = GrpcDaemon(
        "restored",
        listen,
        services,
        on_reload=reload,
        on_stop=stop,
        guard=guard,
        section=lambda new: new.host(host).security,
        job_log=audit_to_job_log(worker.repository),
        config_path=path,
    )
    return daemon, worker


async def serve(config: config_module.Config, host: str, listen: str) -> None:
    daemon, _ = build(config, host, listen)
    await daemon.start()
    await daemon.run_until_signalled()
