"""SchedulerService glue: unpack the request, call the scheduler, pack the response."""

from __future__ import annotations

import grpc

from lifeboat import convert
from lifeboat.operations import OperationState
from lifeboat.v1 import resources_pb2
from lifeboat.v1 import scheduler_pb2 as pb
from lifeboat.v1 import scheduler_pb2_grpc as pb_grpc
from scheduler.fleet import Scheduler
from scheduler.hosts import BackupOperation
from scheduler.planner import JobState, JobView

_STATE_TO_PB = {
    JobState.WAITING: pb.JOB_STATE_WAITING,
    JobState.RUNNING: pb.JOB_STATE_RUNNING,
    JobState.BACKING_OFF: pb.JOB_STATE_BACKING_OFF,
    JobState.HOST_UNREACHABLE: pb.JOB_STATE_HOST_UNREACHABLE,
    JobState.DEFERRED: pb.JOB_STATE_DEFERRED,
}
_RESULT_TO_PB = {
    OperationState.PENDING: resources_pb2.OPERATION_STATE_PENDING,
    OperationState.RUNNING: resources_pb2.OPERATION_STATE_RUNNING,
    OperationState.SUCCEEDED: resources_pb2.OPERATION_STATE_SUCCEEDED,
    OperationState.FAILED: resources_pb2.OPERATION_STATE_FAILED,
    OperationState.CANCELLED: resources_pb2.OPERATION_STATE_CANCELLED,
    OperationState.RETRY_LATER: resources_pb2.OPERATION_STATE_RETRY_LATER,
}


def job_view_to_pb(view: JobView) -> pb.JobView:
    return pb.JobView(
        job=convert.job_to_pb(view.job),
        state=_STATE_TO_PB[view.state],
        next_run_time=convert.timestamp(view.next_run_time),
        next_tags=list(view.next_tags),
        last_backup_time=convert.timestamp(view.last_backup_time),
        last_result=(
            _RESULT_TO_PB[view.last_result]
            if view.last_result is not None
            else resources_pb2.OPERATION_STATE_UNSPECIFIED
        ),
        last_error=view.last_error,
        backoff=convert.duration(view.backoff),
        failures=view.failures,
    )


def operation_to_pb(operation: BackupOperation) -> resources_pb2.Operation:
    return resources_pb2.Operation(
        name=operation.name,
        kind=resources_pb2.OPERATION_KIND_BACKUP,
        job=operation.job,
        host=operation.host,
        state=_RESULT_TO_PB[operation.state],
        create_time=convert.timestamp(operation.create_time),
        start_time=convert.timestamp(operation.start_time),
        end_time=convert.timestamp(operation.end_time),
        bytes_done=operation.bytes_done,
        bytes_total=operation.bytes_total,
        tags=list(operation.tags),
        revision_id=operation.revision_id,
        error=operation.error,
    )


class SchedulerServicer(pb_grpc.SchedulerServiceServicer):
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    async def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListJobsResponse:
        views = self.scheduler.views(request.host)
        return pb.ListJobsResponse(jobs=[job_view_to_pb(view) for view in views])

    async def GetJob(
        self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetJobResponse:
        return pb.GetJobResponse(job=job_view_to_pb(self.scheduler.view(request.job)))

    async def RunJob(
        self, request: pb.RunJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.RunJobResponse:
        operation, started = await self.scheduler.run_job(request.job, list(request.tags))
        return pb.RunJobResponse(operation=operation_to_pb(operation), started=started)

    async def ReloadConfig(
        self, request: pb.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReloadConfigResponse:
        changes = await self.scheduler.reload()
        return pb.ReloadConfigResponse(
            jobs_added=list(changes.added),
            jobs_removed=list(changes.removed),
            jobs_changed=list(changes.changed),
        )
