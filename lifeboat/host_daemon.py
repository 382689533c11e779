"""The one assembly of a backup host's workers (backupd, restored) as gRPC daemons: their
service beside OperationService, the host's TLS and roles, audit lines into the job logs,
reload off the event loop, shutdown of the worker's threads."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal, Protocol

from lifeboat import config as config_module
from lifeboat.bootstrap import GrpcDaemon, ServiceSpec, audit_to_job_log
from lifeboat.operation_service import operation_service
from lifeboat.operations import OperationRegistry
from lifeboat.repository import Repository
from lifeboat.security import guard_for


class HostWorker(Protocol):
    repository: Repository

    def shutdown(self) -> None: ...


def host_daemon(
    name: Literal["backupd", "restored"],
    config: config_module.Config,
    host: str,
    listen: str,
    registry: OperationRegistry,
    worker: HostWorker,
    service: ServiceSpec,
    apply: Callable[[config_module.Config], None],
) -> GrpcDaemon:
    """The daemon of `worker`, not yet started. `apply` takes a reloaded config in (it runs
    in a thread: it may read files)."""
    host_config = config.host(host)
    configured = host_config.backupd if name == "backupd" else host_config.restored
    guard = guard_for(config, host_config.security, listen, (f"hosts.{host}.{name}", configured))
    path = config.path

    async def reload() -> None:
        new = await asyncio.to_thread(config_module.load, path)
        await asyncio.to_thread(apply, new)
        await asyncio.to_thread(daemon.reload_security, new)

    async def stop() -> None:
        await asyncio.to_thread(worker.shutdown)

    daemon = GrpcDaemon(
        name,
        listen,
        [service, operation_service(registry)],
        on_reload=reload,
        on_stop=stop,
        guard=guard,
        section=lambda new: new.host(host).security,
        job_log=audit_to_job_log(worker.repository),
        config_path=path,
    )
    return daemon


Build = Callable[[config_module.Config, str, str], tuple[GrpcDaemon, object]]


async def serve_host(build: Build, config: config_module.Config, host: str, listen: str) -> None:
    """Start a host worker's daemon (from its `build`) and serve until signalled."""
    daemon, _ = build(config, host, listen)
    await daemon.start()
    await daemon.run_until_signalled()


def new_registry(host: str) -> OperationRegistry:
    registry = OperationRegistry(host)
    registry.bind_loop(asyncio.get_running_loop())
    return registry
