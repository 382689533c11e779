"""HostClient over gRPC: BackupService and OperationService of backupd, OperationService of
restored. Failures become domain errors naming the peer; every call has a deadline."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from lifeboat import client, convert
from lifeboat.config import HostConfig
from lifeboat.model import Job
from lifeboat.operations import OperationState
from lifeboat.security import ClientIdentity
from lifeboat.v1 import (
    backup_pb2,
    backup_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
    resources_pb2,
)
from scheduler.hosts import BackupOperation, HostClient, JobOnHost
from scheduler.settings import SchedulerSettings


def operation_from_pb(message: resources_pb2.Operation) -> BackupOperation:
    return BackupOperation(
        name=message.name,
        job=message.job,
        host=message.host,
        state=convert.operation_state_from_pb(message.state) or OperationState.PENDING,
        tags=tuple(message.tags),
        create_time=convert.from_timestamp(message.create_time),
        start_time=convert.from_timestamp(message.start_time),
        end_time=convert.from_timestamp(message.end_time),
        error=message.error,
        revision_id=message.revision_id,
        bytes_done=message.bytes_done,
        bytes_total=message.bytes_total,
    )


def report_from_pb(status: resources_pb2.JobStatus) -> JobOnHost:
    return JobOnHost(
        job=status.job,
        last_tag_times={
            tag: stamp.ToDatetime(tzinfo=dt.UTC) for tag, stamp in status.last_tag_times.items()
        },
        running=(
            operation_from_pb(status.running_operation)
            if status.HasField("running_operation")
            else None
        ),
    )


class GrpcHostClient:
    def __init__(
        self, host: HostConfig, settings: SchedulerSettings, identity: ClientIdentity | None
    ) -> None:
        self.host = host
        self.settings = settings
        self._backupd = client.aio_channel(host.backupd, identity)
        self._restored = client.aio_channel(host.restored, identity)
        self._backups = backup_pb2_grpc.BackupServiceStub(self._backupd)
        self._backup_operations = operations_pb2_grpc.OperationServiceStub(self._backupd)
        self._restore_operations = operations_pb2_grpc.OperationServiceStub(self._restored)

    @property
    def _backupd_peer(self) -> str:
        return f"host {self.host.name} backupd {self.host.backupd}"

    async def job_reports(self) -> list[JobOnHost]:
        reply = await client.acall(
            self._backupd_peer,
            self._backups.ListJobStatuses,
            backup_pb2.ListJobStatusesRequest(),
            self.settings.scan_timeout,
        )
        return [report_from_pb(status) for status in reply.statuses]

    async def job_report(self, job: str) -> JobOnHost:
        reply = await client.acall(
            self._backupd_peer,
            self._backups.GetJobStatus,
            backup_pb2.GetJobStatusRequest(job=job),
            self.settings.call_timeout,
        )
        return report_from_pb(reply.status)

    async def start_backup(self, job: Job, tags: Sequence[str]) -> tuple[BackupOperation, bool]:
        reply = await client.acall(
            self._backupd_peer,
            self._backups.StartBackup,
            backup_pb2.StartBackupRequest(job=job.name, tags=list(tags)),
            self.settings.call_timeout,
        )
        return operation_from_pb(reply.operation), reply.started

    async def running_backups(self) -> list[BackupOperation]:
        reply = await client.acall(
            self._backupd_peer,
            self._backup_operations.ListOperations,
            operations_pb2.ListOperationsRequest(
                running_only=True, kind=resources_pb2.OPERATION_KIND_BACKUP
            ),
            self.settings.call_timeout,
        )
        return [operation_from_pb(operation) for operation in reply.operations]

    async def operation(self, name: str) -> BackupOperation:
        reply = await client.acall(
            self._backupd_peer,
            self._backup_operations.GetOperation,
            operations_pb2.GetOperationRequest(name=name),
            self.settings.call_timeout,
        )
        return operation_from_pb(reply.operation)

    async def running_restores(self) -> int:
        reply = await client.acall(
            f"host {self.host.name} restored {self.host.restored}",
            self._restore_operations.ListOperations,
            operations_pb2.ListOperationsRequest(
                running_only=True, kind=resources_pb2.OPERATION_KIND_RESTORE
            ),
            self.settings.restore_check_timeout,
        )
        return len(reply.operations)

    async def close(self) -> None:
        await self._backupd.close(None)
        await self._restored.close(None)


def grpc_clients(
    settings: SchedulerSettings, identity: ClientIdentity | None = None
) -> Callable[[HostConfig], HostClient]:
    return lambda host: GrpcHostClient(host, settings, identity)
