"""Assembles backupd: worker, BackupService, OperationService, health, reflection, signals."""

from __future__ import annotations

from backupd.backup import BackupSettings
from backupd.service import BackupServicer
from backupd.verify import VerifyLimits
from backupd.worker import BackupWorker, WorkerSettings
from lifeboat import config as config_module
from lifeboat.bootstrap import GrpcDaemon, ServiceSpec
from lifeboat.host_daemon import host_daemon, new_registry, serve_host
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
    registry = new_registry(host)
    worker = BackupWorker(worker_settings(config, host), registry)
    worker.recover_all()
    worker.probe_reflink()
    servicer = BackupServicer(worker)

    def apply(new: config_module.Config) -> None:
        worker.reconfigure(worker_settings(new, host))
        worker.probe_reflink()

    service = ServiceSpec(
        backup_pb2.DESCRIPTOR.services_by_name["BackupService"].full_name,
        lambda server: backup_pb2_grpc.add_BackupServiceServicer_to_server(servicer, server),
    )
    daemon = host_daemon("backupd", config, host, listen, registry, worker, service, apply)
    return daemon, worker


async def serve(config: config_module.Config, host: str, listen: str) -> None:
    await serve_host(build, config, host, listen)
