"""BackupService and OperationService through a real in-process grpc.aio server on port 0."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from backupd.server import build
from lifeboat import config as config_module
from lifeboat import convert
from lifeboat.bootstrap import GrpcDaemon
from lifeboat.model import FileSource, FreezeHook, Job, Schedule, TagSpec
from lifeboat.v1 import backup_pb2 as pb
from lifeboat.v1 import backup_pb2_grpc, operations_pb2, operations_pb2_grpc, resources_pb2

SCHEDULE = Schedule("default", (TagSpec("hourly", dt.timedelta(hours=1), 24),))


def write_config(tmp_path: Path, worker_limit: int = 2) -> config_module.Config:
    path = tmp_path / "lifeboat.yaml"
    path.write_text(
        f"global: {{base-dir: {tmp_path}/repo, worker-limit: {worker_limit}}}\n"
        "schedules: {default: {hourly: {interval: 1h, keep: 24}}}\n"
    )
    return config_module.load(str(path))


class Client:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.backup = backup_pb2_grpc.BackupServiceStub(channel)
        self.operations = operations_pb2_grpc.OperationServiceStub(channel)

    async def wait(self, name: str) -> resources_pb2.Operation:
        last = resources_pb2.Operation()
        async for reply in self.operations.WatchOperation(
            operations_pb2.WatchOperationRequest(name=name), timeout=60
        ):
            last = reply.operation
        return last


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Client, GrpcDaemon]]:
    config = write_config(tmp_path, worker_limit=1)
    daemon, _ = build(config, "localhost", "127.0.0.1:0")
    port = await daemon.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Client(channel), daemon
    await daemon.stop(grace=1)


def make_source(tmp_path: Path, name: str = "vm.raw", size: int = 4 << 20) -> Path:
    path = tmp_path / name
    path.write_bytes(random.randbytes(size))
    return path


def job_message(name: str, source: Path, freeze: str = "") -> resources_pb2.Job:
    freeze_hook = FreezeHook(freeze) if freeze else None
    return convert.job_to_pb(Job(name, "localhost", SCHEDULE, FileSource(str(source)), freeze_hook))


async def test_backup_round_trip_over_grpc(
    served: tuple[Client, GrpcDaemon], tmp_path: Path
) -> None:
    client, _ = served
    source = make_source(tmp_path)
    started = await client.backup.StartBackup(
        pb.StartBackupRequest(job=job_message("vm-web01", source), tags=["hourly"])
    )
    assert started.started
    assert started.operation.kind == resources_pb2.OPERATION_KIND_BACKUP
    done = await client.wait(started.operation.name)
    assert done.state == resources_pb2.OPERATION_STATE_SUCCEEDED, done.error
    assert done.bytes_done == done.bytes_total == source.stat().st_size

    listed = await client.backup.ListRevisions(pb.ListRevisionsRequest(job="vm-web01"))
    assert [r.id for r in listed.revisions] == [done.revision_id]
    revision = listed.revisions[0]
    assert revision.trust == resources_pb2.TRUST_TRUSTED
    assert revision.stats.full
    assert revision.verification.state == resources_pb2.VERIFICATION_STATE_PASSED
    assert Path(revision.path).read_bytes() == source.read_bytes()

    last = await client.backup.GetRevision(
        pb.GetRevisionRequest(job="vm-web01", revision_id="last")
    )
    assert last.revision.id == done.revision_id

    tagged = await client.backup.UpdateRevisionTags(
        pb.UpdateRevisionTagsRequest(
            job="vm-web01",
            revision_id=done.revision_id,
            add_tags=["manual:keep"],
            remove_tags=["hourly"],
        )
    )
    assert list(tagged.revision.tags) == ["manual:keep"]

    verify = await client.backup.VerifyRevision(pb.VerifyRevisionRequest(job="vm-web01"))
    verified = await client.wait(verify.operation.name)
    assert verified.state == resources_pb2.OPERATION_STATE_SUCCEEDED, verified.error

    status = await client.backup.GetJobStatus(pb.GetJobStatusRequest(job="vm-web01"))
    assert status.status.last_good_revision.id == done.revision_id
    assert status.status.revision_count == 1
    assert "manual:keep" in status.status.last_tag_times

    statuses = await client.backup.ListJobStatuses(pb.ListJobStatusesRequest())
    assert [s.job for s in statuses.statuses] == ["vm-web01"]

    host = await client.backup.GetHostStatus(pb.GetHostStatusRequest())
    assert host.host == "localhost" and host.free_bytes > 0 and host.worker_limit == 1

    await client.backup.DeleteRevision(
        pb.DeleteRevisionRequest(job="vm-web01", revision_id=done.revision_id)
    )
    assert not (
        await client.backup.ListRevisions(pb.ListRevisionsRequest(job="vm-web01"))
    ).revisions


async def test_second_start_returns_the_running_operation_and_limit_applies(
    served: tuple[Client, GrpcDaemon], tmp_path: Path
) -> None:
    client, _ = served
    slow = job_message("vm-slow", make_source(tmp_path, "slow.raw"), freeze="sleep 2")
    first = await client.backup.StartBackup(pb.StartBackupRequest(job=slow, tags=["hourly"]))
    again = await client.backup.StartBackup(pb.StartBackupRequest(job=slow, tags=["hourly"]))
    assert first.started and not again.started
    assert again.operation.name == first.operation.name

    other = job_message("vm-other", make_source(tmp_path, "other.raw"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.backup.StartBackup(pb.StartBackupRequest(job=other, tags=["hourly"]))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "worker-limit" in (caught.value.details() or "")

    running = await client.operations.ListOperations(
        operations_pb2.ListOperationsRequest(running_only=True)
    )
    assert [op.name for op in running.operations] == [first.operation.name]
    cancelled = await client.operations.CancelOperation(
        operations_pb2.CancelOperationRequest(name=first.operation.name)
    )
    assert cancelled.operation.name == first.operation.name
    final = await client.wait(first.operation.name)
    assert final.state == resources_pb2.OPERATION_STATE_CANCELLED


@pytest.mark.parametrize(
    ("method", "request_message", "code", "field"),
    [
        pytest.param(
            "StartBackup",
            pb.StartBackupRequest(tags=["hourly"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "job.name",
            id="no-job",
        ),
        pytest.param(
            "StartBackup",
            pb.StartBackupRequest(job=resources_pb2.Job(name="vm-a"), tags=["hourly"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "job.source",
            id="no-source",
        ),
        pytest.param(
            "StartBackup",
            pb.StartBackupRequest(job=job_message("../etc", Path("/dev/null")), tags=["hourly"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "job",
            id="traversal",
        ),
        pytest.param(
            "StartBackup",
            pb.StartBackupRequest(job=job_message("vm-a", Path("/dev/null"))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "tags",
            id="no-tags",
        ),
        pytest.param(
            "ListRevisions",
            pb.ListRevisionsRequest(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "job",
            id="list-no-job",
        ),
        pytest.param(
            "ListRevisions",
            pb.ListRevisionsRequest(job="absent"),
            grpc.StatusCode.NOT_FOUND,
            "absent",
            id="unknown-job",
        ),
        pytest.param(
            "GetRevision",
            pb.GetRevisionRequest(job="absent", revision_id="last"),
            grpc.StatusCode.NOT_FOUND,
            "absent",
            id="get-unknown",
        ),
        pytest.param(
            "DeleteJobData",
            pb.DeleteJobDataRequest(job="vm-a", confirm_job="vm-b"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "confirm_job",
            id="confirm",
        ),
    ],
)
async def test_bad_requests_get_the_right_code(
    served: tuple[Client, GrpcDaemon],
    method: str,
    request_message: object,
    code: grpc.StatusCode,
    field: str,
) -> None:
    client, _ = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(client.backup, method)(request_message)
    assert caught.value.code() == code
    assert field in (caught.value.details() or "")


async def test_unknown_operation_is_not_found(served: tuple[Client, GrpcDaemon]) -> None:
    client, _ = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.operations.GetOperation(operations_pb2.GetOperationRequest(name="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


LONG = "x" * 4000


@pytest.mark.parametrize(
    ("method", "request_message", "field"),
    [
        pytest.param("ListRevisions", pb.ListRevisionsRequest(job=LONG), "job", id="list"),
        pytest.param(
            "GetRevision", pb.GetRevisionRequest(job=LONG, revision_id="last"), "job", id="get"
        ),
        pytest.param("GetJobStatus", pb.GetJobStatusRequest(job=LONG), "job", id="status"),
        pytest.param("VerifyRevision", pb.VerifyRevisionRequest(job=LONG), "job", id="verify"),
        pytest.param(
            "UpdateRevisionTags",
            pb.UpdateRevisionTagsRequest(job=LONG, revision_id="last", remove_tags=["hourly"]),
            "job",
            id="update-tags",
        ),
    ],
)
async def test_a_long_name_is_refused_in_a_short_message(
    served: tuple[Client, GrpcDaemon], method: str, request_message: object, field: str
) -> None:
    client, _ = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(client.backup, method)(request_message)
    details = caught.value.details() or ""
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(f"{field}: ") and len(details) < 300, details


async def test_a_long_revision_id_or_operation_name_is_not_repeated(
    served: tuple[Client, GrpcDaemon], tmp_path: Path
) -> None:
    client, _ = served
    source = make_source(tmp_path)
    started = await client.backup.StartBackup(
        pb.StartBackupRequest(job=job_message("vm-web01", source), tags=["hourly"])
    )
    await client.wait(started.operation.name)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.backup.GetRevision(pb.GetRevisionRequest(job="vm-web01", revision_id=LONG))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert details.startswith("revision: ") and len(details) < 300, details
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.operations.GetOperation(operations_pb2.GetOperationRequest(name=LONG))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(caught.value.details() or "") < 300
