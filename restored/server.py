"""Assembles restored: RestoreService, OperationService, health, reflection, signals."""

from __future__ import annotations

from lifeboat import config as config_module
from lifeboat.bootstrap import GrpcDaemon, ServiceSpec
from lifeboat.host_daemon import host_daemon, new_registry, serve_host
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
    registry = new_registry(host)
    worker = RestoreWorker(restore_settings(config, host), registry)
    worker.recover_interrupted()
    servicer = RestoreServicer(worker)

    def apply(new: config_module.Config) -> None:
        worker.reconfigure(restore_settings(new, host))

    service = ServiceSpec(
        restore_pb2.DESCRIPTOR.services_by_name["RestoreService"].full_name,
        lambda server: restore_pb2_grpc.add_RestoreServiceServicer_to_server(servicer, server),
    )
    daemon = host_daemon("restored", config, host, listen, registry, worker, service, apply)
    return daemon, worker


async def serve(config: config_module.Config, host: str, listen: str) -> None:
    await serve_host(build, config, host, listen)
