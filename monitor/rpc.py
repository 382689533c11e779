"""The monitor's `Source` over gRPC: asks backupd, restored and the scheduler, and turns
their answers into `monitor.observations`. The only monitor module that makes RPCs."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc

from lifeboat import client, convert
from lifeboat.clock import SYSTEM, Clock
from lifeboat.config import HostConfig
from lifeboat.security import ClientIdentity
from lifeboat.sla import Damage
from lifeboat.v1 import (
    backup_pb2,
    backup_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
    resources_pb2,
    restore_pb2,
    restore_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from monitor.observations import (
    BackupdObservation,
    JobObservation,
    RestoredObservation,
    RunningRestore,
    SchedulerObservation,
)


def job_observation(status: resources_pb2.JobStatus) -> JobObservation:
    newest = status.last_revision
    has_newest = status.HasField("last_revision")
    good = status.last_good_revision
    return JobObservation(
        job=status.job,
        last_good_time=(
            convert.from_timestamp(good.create_time)
            if status.HasField("last_good_revision")
            else None
        ),
        newest_distrusted=has_newest and newest.trust == resources_pb2.TRUST_DISTRUSTED,
        verification_failed=(
            has_newest and newest.verification.state == resources_pb2.VERIFICATION_STATE_FAILED
        ),
        revision_count=status.revision_count,
        bytes_used=status.bytes_used,
        backup_running=status.HasField("running_operation"),
        last_error=status.last_error,
        damaged_revisions=tuple(Damage(r.id, r.damage) for r in status.damaged_revisions),
    )


def backupd_observation(
    statuses: backup_pb2.ListJobStatusesResponse, host: backup_pb2.GetHostStatusResponse
) -> BackupdObservation:
    return BackupdObservation(
        jobs={s.job: job_observation(s) for s in statuses.statuses},
        free_bytes=host.free_bytes,
        total_bytes=host.total_bytes,
        running_backups=host.running_backups,
    )


def running_restore(operation: resources_pb2.Operation, now: dt.datetime) -> RunningRestore:
    started = convert.from_timestamp(operation.start_time)
    elapsed = max(now - started, dt.timedelta(0)) if started else dt.timedelta(0)
    return RunningRestore(
        job=operation.job,
        elapsed=elapsed,
        eta=convert.from_duration(operation.eta) if operation.HasField("eta") else None,
        restore_within=convert.from_duration(operation.restore_within),
    )


def restored_observation(
    estimates: restore_pb2.ListRestoreEstimatesResponse | None,
    operations: operations_pb2.ListOperationsResponse,
    now: dt.datetime,
) -> RestoredObservation:
    predicted: dict[str, dt.timedelta] = {}
    for estimate in estimates.estimates if estimates else ():
        duration = convert.from_duration(estimate.predicted_duration)
        if duration is not None:
            predicted[estimate.job] = duration
    running = tuple(
        running_restore(op, now)
        for op in operations.operations
        if op.kind == resources_pb2.OPERATION_KIND_RESTORE
        and op.state
        in (resources_pb2.OPERATION_STATE_PENDING, resources_pb2.OPERATION_STATE_RUNNING)
    )
    return RestoredObservation(predicted, running, estimates_available=estimates is not None)


def scheduler_observation(jobs: scheduler_pb2.ListJobsResponse) -> SchedulerObservation:
    next_runs = {}
    for view in jobs.jobs:
        when = convert.from_timestamp(view.next_run_time)
        if when is not None:
            next_runs[view.job.name] = when
    return SchedulerObservation(next_runs)


def _unimplemented(error: grpc.aio.AioRpcError) -> bool:
    if error.code() == grpc.StatusCode.UNIMPLEMENTED:
        return True
    # The generated base servicer raises NotImplementedError, which the server's
    # error interceptor reports as INTERNAL rather than UNIMPLEMENTED.
    return error.code() == grpc.StatusCode.INTERNAL and "NotImplementedError" in (
        error.details() or ""
    )


class GrpcSource:
    """Asks the daemons over one reused channel per address; a running restore's elapsed
    time is counted on `clock`."""

    def __init__(self, identity: ClientIdentity | None = None, clock: Clock = SYSTEM) -> None:
        self.identity = identity
        self.clock = clock
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = client.aio_channel(address, self.identity)
            self._channels[address] = channel
        return channel

    async def backupd(self, host: HostConfig, timeout: float) -> BackupdObservation:
        peer = f"backupd {host.backupd}"
        stub = backup_pb2_grpc.BackupServiceStub(self._channel(host.backupd))
        statuses, status = await asyncio.gather(
            client.acall(peer, stub.ListJobStatuses, backup_pb2.ListJobStatusesRequest(), timeout),
            client.acall(peer, stub.GetHostStatus, backup_pb2.GetHostStatusRequest(), timeout),
        )
        return backupd_observation(statuses, status)

    async def restored(self, host: HostConfig, timeout: float) -> RestoredObservation:
        peer = f"restored {host.restored}"
        channel = self._channel(host.restored)
        estimates, operations = await asyncio.gather(
            self._estimates(peer, channel, timeout),
            client.acall(
                peer,
                operations_pb2_grpc.OperationServiceStub(channel).ListOperations,
                operations_pb2.ListOperationsRequest(
                    running_only=True, kind=resources_pb2.OPERATION_KIND_RESTORE
                ),
                timeout,
            ),
        )
        return restored_observation(estimates, operations, self.clock.now())

    async def _estimates(
        self, peer: str, channel: grpc.aio.Channel, timeout: float
    ) -> restore_pb2.ListRestoreEstimatesResponse | None:
        """Restore estimates; None while restored does not implement them (no restore data)."""
        stub = restore_pb2_grpc.RestoreServiceStub(channel)
        try:
            return await stub.ListRestoreEstimates(
                restore_pb2.ListRestoreEstimatesRequest(), timeout=timeout
            )
        except grpc.aio.AioRpcError as error:
            if _unimplemented(error):
                return None
            raise client.failure(error, peer, timeout) from None

    async def scheduler(self, address: str, timeout: float) -> SchedulerObservation:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(self._channel(address))
        reply = await client.acall(
            f"scheduler {address}", stub.ListJobs, scheduler_pb2.ListJobsRequest(), timeout
        )
        return scheduler_observation(reply)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close(None)
