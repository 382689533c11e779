"""RestoreService glue: unpack the request, call the worker, pack the response."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from lifeboat import convert
from lifeboat.errors import Cancelled, InvalidArgument
from lifeboat.v1 import restore_pb2 as pb
from lifeboat.v1 import restore_pb2_grpc as pb_grpc
from restored.worker import RestoreEstimate, RestoreRequest, RestoreWorker, RevisionChoice


def _choice(request: pb.StartRestoreRequest) -> RevisionChoice:
    which = request.WhichOneof("revision")
    if which == "revision_id":
        if not request.revision_id:
            raise InvalidArgument("revision_id", "must not be empty")
        return RevisionChoice(revision_id=request.revision_id)
    if which == "tag":
        if not request.tag:
            raise InvalidArgument("tag", "must not be empty")
        return RevisionChoice(tag=request.tag)
    return RevisionChoice()  # latest, or nothing chosen: the newest good revision


def _estimate(estimate: RestoreEstimate) -> pb.RestoreEstimate:
    return pb.RestoreEstimate(
        job=estimate.job,
        size=estimate.size,
        predicted_duration=convert.duration(estimate.predicted),
        restore_within=convert.duration(estimate.restore_within),
        meets_restore_target=estimate.meets_restore_target,
        revision_id=estimate.revision_id,
        data_bytes=estimate.data_bytes,
    )


class RestoreServicer(pb_grpc.RestoreServiceServicer):
    def __init__(self, worker: RestoreWorker) -> None:
        self.worker = worker

    async def StartRestore(
        self, request: pb.StartRestoreRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartRestoreResponse:
        restore = RestoreRequest(
            job=request.job,
            target=request.target,
            choice=_choice(request),
            overwrite=request.overwrite,
            restore_within=convert.request_duration(request.restore_within, "restore_within"),
        )
        # Opening an RBD target talks to Ceph: keep the event loop free meanwhile.
        record = await asyncio.to_thread(self.worker.start_restore, restore)
        return pb.StartRestoreResponse(operation=convert.operation_to_pb(record))

    async def ReadRevision(
        self, request: pb.ReadRevisionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ReadRevisionResponse]:
        peer = context.peer()  # asking a call that has gone away crashes grpc
        stream = await asyncio.to_thread(
            self.worker.open_stream, request.job, request.revision_id, request.chunk_size, peer
        )
        failure: BaseException | None = None
        try:
            size: int | None = stream.size
            while (piece := await asyncio.to_thread(stream.next_piece)) is not None:
                offset, data = piece
                yield pb.ReadRevisionResponse(offset=offset, data=data, size=size or 0)
                size = None
            if size is not None:  # no data at all: still say how big the image is
                yield pb.ReadRevisionResponse(offset=0, size=size)
        except (asyncio.CancelledError, GeneratorExit):
            failure = Cancelled(f"{peer} stopped reading")
            raise
        except BaseException as error:
            failure = error
            raise
        finally:
            # Waits for a read still running in its thread (at most one chunk).
            stream.close(failure)

    async def ListRestoreEstimates(
        self, request: pb.ListRestoreEstimatesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRestoreEstimatesResponse:
        report = await asyncio.to_thread(self.worker.estimates, list(request.jobs))
        return pb.ListRestoreEstimatesResponse(
            estimates=[_estimate(e) for e in report.estimates],
            throughput_bytes_per_second=report.throughput,
            running_restores=report.running_restores,
        )
