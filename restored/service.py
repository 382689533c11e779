"""RestoreService glue: unpack the request, call the worker, pack the response."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from lifeboat import convert
from lifeboat.errors import InvalidArgument, LifeboatError
from lifeboat.grpc_errors import status_for
from lifeboat.v1 import restore_pb2 as pb
from lifeboat.v1 import restore_pb2_grpc as pb_grpc
from restored import streams
from restored.worker import RestoreEstimate, RestoreRequest, RestoreWorker, RevisionChoice

log = logging.getLogger("lifeboat.restored")

# Status sends of cancelled streams, kept referenced until the client has them.
_ending: set[asyncio.Future[None]] = set()


async def _abort(context: grpc.aio.ServicerContext, reason: LifeboatError) -> None:
    try:
        await context.abort(status_for(reason), str(reason))
    except grpc.aio.AbortError:
        pass  # how abort() always ends
    except Exception as error:  # the client went away first: nobody to tell
        log.debug("status not sent (%s): %r", reason, error)


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
        meets_restore_within=estimate.meets_restore_within,
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
        handler = asyncio.current_task()
        stream = await asyncio.to_thread(
            self.worker.open_stream, request.job, request.revision_id, request.chunk_size, peer
        )

        def end_call(reason: LifeboatError) -> None:
            # The client takes no messages, so the status waits behind those in flight:
            # it is sent from a task of its own while this handler stops at once.
            ending = asyncio.ensure_future(_abort(context, reason))
            _ending.add(ending)
            ending.add_done_callback(_ending.discard)
            if handler is not None:
                handler.cancel()

        async for piece in streams.serve(stream, end_call):
            yield pb.ReadRevisionResponse(offset=piece.offset, data=piece.data, size=piece.size)

    async def ListRestoreEstimates(
        self, request: pb.ListRestoreEstimatesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRestoreEstimatesResponse:
        report = await asyncio.to_thread(self.worker.estimates, list(request.jobs))
        return pb.ListRestoreEstimatesResponse(
            estimates=[_estimate(e) for e in report.estimates],
            throughput_bytes_per_second=report.throughput,
            running_restores=report.running_restores,
        )
