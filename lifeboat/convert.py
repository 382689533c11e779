"""Between domain types and lifeboat.v1 messages. Used by servicer glue and clients only."""

from __future__ import annotations

import datetime as dt

from google.protobuf import duration_pb2, timestamp_pb2

from lifeboat import bounds
from lifeboat.errors import InvalidArgument
from lifeboat.model import FileSource, Job, Source
from lifeboat.operations import OperationKind, OperationRecord, OperationState
from lifeboat.repository import DamagedRevision, RevisionMeta
from lifeboat.revision import Trust, Verification, VerificationState
from lifeboat.v1 import resources_pb2 as pb

_KIND_TO_PB = {
    OperationKind.BACKUP: pb.OPERATION_KIND_BACKUP,
    OperationKind.RESTORE: pb.OPERATION_KIND_RESTORE,
    OperationKind.VERIFY: pb.OPERATION_KIND_VERIFY,
    OperationKind.STREAM: pb.OPERATION_KIND_STREAM,
}
_KIND_FROM_PB = {value: key for key, value in _KIND_TO_PB.items()}
_STATE_TO_PB = {
    OperationState.PENDING: pb.OPERATION_STATE_PENDING,
    OperationState.RUNNING: pb.OPERATION_STATE_RUNNING,
    OperationState.SUCCEEDED: pb.OPERATION_STATE_SUCCEEDED,
    OperationState.FAILED: pb.OPERATION_STATE_FAILED,
    OperationState.CANCELLED: pb.OPERATION_STATE_CANCELLED,
    OperationState.RETRY_LATER: pb.OPERATION_STATE_RETRY_LATER,
}
_STATE_FROM_PB = {value: key for key, value in _STATE_TO_PB.items()}
_TRUST_TO_PB = {
    Trust.TRUSTED: pb.TRUST_TRUSTED,
    Trust.DISTRUSTED: pb.TRUST_DISTRUSTED,
}
_VERIFICATION_STATE_TO_PB = {
    VerificationState.PASSED: pb.VERIFICATION_STATE_PASSED,
    VerificationState.PARTIAL: pb.VERIFICATION_STATE_PARTIAL,
    VerificationState.FAILED: pb.VERIFICATION_STATE_FAILED,
    VerificationState.SKIPPED: pb.VERIFICATION_STATE_SKIPPED,
}


def timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(value.astimezone(dt.UTC))
    return result


def from_timestamp(value: timestamp_pb2.Timestamp) -> dt.datetime | None:
    if value.seconds == 0 and value.nanos == 0:
        return None
    return value.ToDatetime(tzinfo=dt.UTC)


def duration(value: dt.timedelta | None) -> duration_pb2.Duration | None:
    if value is None:
        return None
    result = duration_pb2.Duration()
    result.FromTimedelta(value)
    return result


def from_duration(value: duration_pb2.Duration) -> dt.timedelta | None:
    if value.seconds == 0 and value.nanos == 0:
        return None
    return value.ToTimedelta()


def request_duration(value: duration_pb2.Duration, field: str) -> dt.timedelta | None:
    """A duration a caller sent: None when zero (not given), InvalidArgument naming `field`
    outside the bounds of `lifeboat.bounds` (checked before a timedelta could overflow)."""
    if value.seconds == 0 and value.nanos == 0:
        return None
    problem = bounds.seconds_problem(value.seconds + value.nanos / 1e9)
    if problem is not None:
        raise InvalidArgument(field, problem)
    return value.ToTimedelta()


def source_to_pb(source: Source) -> pb.Source:
    if isinstance(source, FileSource):
        return pb.Source(file=pb.FileSource(path=source.path))
    return pb.Source(
        ceph_rbd=pb.CephRbdSource(
            pool=source.pool, image=source.image, conf=source.conf, id=source.id
        )
    )


def job_to_pb(job: Job) -> pb.Job:
    message = pb.Job(
        name=job.name,
        host=job.host,
        schedule=pb.Schedule(
            name=job.schedule.name,
            tags=[
                pb.ScheduleTag(name=t.name, interval=duration(t.interval), keep=t.keep)
                for t in job.schedule.tags
            ],
        ),
        source=source_to_pb(job.source),
        sla_factor=job.sla_factor,
    )
    if job.freeze is not None:
        message.freeze.CopyFrom(
            pb.FreezeHook(
                command=job.freeze.command,
                timeout=duration(job.freeze.timeout),
                thaw_command=job.freeze.thaw_command,
            )
        )
    if job.restore_within is not None:
        message.restore_within.FromTimedelta(job.restore_within)
    return message


def operation_to_pb(record: OperationRecord) -> pb.Operation:
    message = pb.Operation(
        name=record.name,
        kind=_KIND_TO_PB[record.kind],
        job=record.job,
        host=record.host,
        state=_STATE_TO_PB[record.state],
        create_time=timestamp(record.create_time),
        start_time=timestamp(record.start_time),
        end_time=timestamp(record.end_time),
        bytes_done=record.bytes_done,
        bytes_total=record.bytes_total,
        throughput_bytes_per_second=record.throughput(),
        eta=duration(record.eta()),
        tags=list(record.tags),
        revision_id=record.revision_id,
        target=record.target,
        error=record.error,
        meets_restore_within=record.meets_restore_within(),
        restore_within=duration(record.restore_within),
    )
    return message


def operation_kind_from_pb(value: int) -> OperationKind | None:
    return _KIND_FROM_PB.get(value)  # type: ignore[call-overload]


def operation_state_from_pb(value: int) -> OperationState | None:
    return _STATE_FROM_PB.get(value)  # type: ignore[call-overload]


def _verification_to_pb(verification: Verification | None) -> pb.Verification:
    """An unset message (state unspecified) for a revision never verified."""
    if verification is None:
        return pb.Verification()
    return pb.Verification(
        state=_VERIFICATION_STATE_TO_PB[verification.state],
        verify_time=timestamp(verification.time),
        against=verification.against.value,
        blocks_checked=verification.blocks_checked,
        blocks_total=verification.blocks_total,
        mismatched_offsets=verification.mismatched_offsets,
    )


def revision_to_pb(meta: RevisionMeta, path: str = "") -> pb.Revision:
    stats = meta.stats or {}
    return pb.Revision(
        id=meta.id,
        job=meta.job,
        create_time=timestamp(meta.timestamp),
        parent_id=meta.parent or "",
        tags=sorted(meta.tags),
        size=meta.size,
        block_size=meta.block_size,
        checksum_algorithm=meta.checksum,
        trust=_TRUST_TO_PB[meta.trust],
        verification=_verification_to_pb(meta.verification),
        stats=pb.RevisionStats(
            bytes_read=int(stats.get("bytes-read", 0)),
            bytes_written=int(stats.get("bytes-written", 0)),
            blocks_changed=int(stats.get("blocks-changed", 0)),
            duration=duration(dt.timedelta(seconds=float(stats.get("duration", 0.0)))),
            full=bool(stats.get("full", False)),
        ),
        path=path,
    )


def entry_to_pb(entry: RevisionMeta | DamagedRevision, path: str = "") -> pb.Revision:
    """A revision as a reader found it; a damaged one carries `damage` and what its `.rev`
    still says (only id, job and the time from its id when the `.rev` is damaged)."""
    if isinstance(entry, RevisionMeta):
        return revision_to_pb(entry, path)
    if entry.meta is not None:
        message = revision_to_pb(entry.meta, path)
    else:
        message = pb.Revision(
            id=entry.id, job=entry.job, create_time=timestamp(entry.timestamp), path=path
        )
    message.damage = entry.reason
    return message
