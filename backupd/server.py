"""Assembles backupd: worker, BackupService, OperationService, health, reflection, signals."""

from __future__ import annotations

import asyncio

from backupd.backup import BackupSettings
from backupd.service import BackupServicer
from backupd.verify import VerifyLimits
from backupd.worker import BackupWorker, WorkerSettings
from lifeboat import config as config_module
from lifeboat.bootstrap import GrpcDaemon, ServiceSpec, audit_to_job_log
from lifeboat.operation_service import operation_service
from lifeboat.operations import OperationRegistry
from lifeboat.security import guard_for
from lifeboat.v1 import backup_pb2, backup_pb2_grpc


def worker_settings(config: config_module.Config, host: str) -> WorkerSettings:
    host_config = config.host(host)
    return WorkerSettings(
        host=host,
        base_dir=host_config.base_dir,
        worker_limit=host_config.worker_limit,
        jobs={job.name: job for job in config.jobs_on(host)},
        config_path=config.path,
        backup=BackupSettings(
            verify=VerifyLimits(
                fraction=config.global_.verify_fraction,
                time_limit=config.global_.verify_time_limit.total_seconds(),
            )
        ),
    )


def build(config: config_module.Config, host: str, listen: str) -> tuple[GrpcDaemon, BackupWorker]:
    """The daemon, not yet started; tests start it on port 0."""
    registry = OperationRegistry(host)
    registry.bind_loop(asyncio.get_running_loop())
    worker = BackupWorker(worker_settings(config, host), registry)
    worker.recover_all()
    worker.probe_reflink()
    servicer = BackupServicer(worker)
    path = config.path
    host_config = config.host(host)
    guard = guard_for(
        config, host_config.security, listen, (f"hosts.{host}.backupd", host_config.backupd)
    )

    async def reload() -> None:
        new = await asyncio.to_thread(config_module.load, path)
        worker.reconfigure(worker_settings(new, host))
        await asyncio.to_thread(worker.probe_reflink)
        daemon.reload_security(new)

    async def stop() -> None:
        await asyncio.to_thread(worker.shutdown)

    services = [
        ServiceSpec(
            backup_pb2.DESCRIPTOR.services_by_name["BackupService"].full_name,
            lambda server: backup_pb2_grpc.add_BackupServiceServicer_to_server(servicer, server),
        ),
        operation_service(registry),
    ]
    daemon = GrpcDaemon(
        "backupd",
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
