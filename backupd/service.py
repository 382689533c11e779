"""BackupService glue: unpack the request, call the worker, pack the response.

Worker methods that read or write files run on threads (`asyncio.to_thread`), or are
async themselves: nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio

import grpc

from backupd.worker import BackupWorker, JobStatus
from lifeboat import clock, convert
from lifeboat.errors import InvalidArgument
from lifeboat.repository import Entry
from lifeboat.revision_cache import JobListing
from lifeboat.v1 import backup_pb2 as pb
from lifeboat.v1 import backup_pb2_grpc as pb_grpc
from lifeboat.v1 import resources_pb2


def _required(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(field, "required")
    return value


class BackupServicer(pb_grpc.BackupServiceServicer):
    def __init__(self, worker: BackupWorker) -> None:
        self.worker = worker
        # Per job: the last listing's revisions and their reply, built again only when
        # they change (1,000 revisions take 10 ms to convert).
        self._listed: dict[str, tuple[tuple[Entry, ...], pb.ListRevisionsResponse]] = {}

    def _revision(self, entry: Entry) -> resources_pb2.Revision:
        path = self.worker.repository.job(entry.job).image_path(entry.id)
        return convert.entry_to_pb(entry, str(path))

    def _status(self, status: JobStatus) -> resources_pb2.JobStatus:
        message = resources_pb2.JobStatus(
            job=status.job,
            last_error=status.last_error,
            last_error_time=convert.timestamp(status.last_error_time),
            revision_count=status.revision_count,
            bytes_used=status.bytes_used,
        )
        if status.last_revision is not None:
            message.last_revision.CopyFrom(self._revision(status.last_revision))
        if status.last_good_revision is not None:
            message.last_good_revision.CopyFrom(self._revision(status.last_good_revision))
        if status.running is not None:
            message.running_operation.CopyFrom(convert.operation_to_pb(status.running))
        for tag, when in status.last_tag_times.items():
            message.last_tag_times[tag].FromDatetime(when)
        message.damaged_revisions.extend(self._revision(d) for d in status.damaged)
        return message

    async def StartBackup(
        self, request: pb.StartBackupRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartBackupResponse:
        job = _required(request.job, "job")
        if not self.worker.configures(job):
            # Off the event loop: telling "not configured" from "not reloaded" reads the file.
            raise await asyncio.to_thread(self.worker.unconfigured_error, job)
        record, started = await self.worker.start_backup(job, list(request.tags))
        return pb.StartBackupResponse(operation=convert.operation_to_pb(record), started=started)

    async def ListRevisions(
        self, request: pb.ListRevisionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRevisionsResponse:
        listing = await asyncio.to_thread(self.worker.job_listing, _required(request.job, "job"))
        return self._listing_reply(listing)

    def _listing_reply(self, listing: JobListing) -> pb.ListRevisionsResponse:
        known = self._listed.get(listing.job)
        if known is not None and known[0] is listing.entries:
            return known[1]
        reply = pb.ListRevisionsResponse(revisions=[self._revision(e) for e in listing.entries])
        self._listed[listing.job] = (listing.entries, reply)
        return reply

    async def GetRevision(
        self, request: pb.GetRevisionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRevisionResponse:
        entry = await asyncio.to_thread(
            self.worker.get_entry, _required(request.job, "job"), request.revision_id
        )
        return pb.GetRevisionResponse(revision=self._revision(entry))

    async def DeleteRevision(
        self, request: pb.DeleteRevisionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteRevisionResponse:
        await self.worker.delete_revision(
            _required(request.job, "job"),
            _required(request.revision_id, "revision_id"),
            request.confirm_revision_id,
        )
        return pb.DeleteRevisionResponse()

    async def UpdateRevisionTags(
        self, request: pb.UpdateRevisionTagsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateRevisionTagsResponse:
        meta = await self.worker.update_tags(
            _required(request.job, "job"),
            _required(request.revision_id, "revision_id"),
            list(request.add_tags),
            list(request.remove_tags),
        )
        return pb.UpdateRevisionTagsResponse(revision=self._revision(meta))

    async def VerifyRevision(
        self, request: pb.VerifyRevisionRequest, context: grpc.aio.ServicerContext
    ) -> pb.VerifyRevisionResponse:
        record = await self.worker.start_verify(_required(request.job, "job"), request.revision_id)
        return pb.VerifyRevisionResponse(operation=convert.operation_to_pb(record))

    async def GetJobStatus(
        self, request: pb.GetJobStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetJobStatusResponse:
        status = await asyncio.to_thread(self.worker.job_status, _required(request.job, "job"))
        return pb.GetJobStatusResponse(status=self._status(status))

    async def ListJobStatuses(
        self, request: pb.ListJobStatusesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListJobStatusesResponse:
        statuses = await asyncio.to_thread(self.worker.job_statuses)
        return pb.ListJobStatusesResponse(statuses=[self._status(s) for s in statuses])

    async def GetHostStatus(
        self, request: pb.GetHostStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetHostStatusResponse:
        status = await asyncio.to_thread(self.worker.host_status)
        return pb.GetHostStatusResponse(
            host=status.host,
            base_dir=str(status.base_dir),
            free_bytes=status.free_bytes,
            total_bytes=status.total_bytes,
            running_backups=status.running_backups,
            worker_limit=status.worker_limit,
            reflink=status.reflink,
            time=convert.timestamp(clock.now()),
        )

    async def DeleteJobData(
        self, request: pb.DeleteJobDataRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteJobDataResponse:
        job = _required(request.job, "job")
        count = await asyncio.to_thread(self.worker.delete_job_data, job, request.confirm_job)
        self._listed.pop(job, None)
        return pb.DeleteJobDataResponse(revisions_deleted=count)
