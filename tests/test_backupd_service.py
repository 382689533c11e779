"""BackupService and OperationService through a real in-process grpc.aio server on port 0."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from backupd.server import build
from backupd.worker import BackupWorker
from lifeboat import config as config_module
from lifeboat.bootstrap import GrpcDaemon
from lifeboat.repository import Repository
from lifeboat.revision import Trust
from lifeboat.v1 import backup_pb2 as pb
from lifeboat.v1 import backup_pb2_grpc, operations_pb2, operations_pb2_grpc, resources_pb2

HOST = "backup01"


def make_source(tmp_path: Path, name: str = "vm.raw", size: int = 4 << 20) -> Path:
    path = tmp_path / name
    path.write_bytes(random.randbytes(size))
    return path


class ConfigFile:
    """The config file backupd reads: hosts backup01 (the one served) and backup02."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.path = tmp_path / "lifeboat.yaml"
        self.jobs: dict[str, dict[str, Any]] = {}

    def add_job(self, name: str, host: str = HOST, freeze: str = "") -> Path:
        """Configure a job with a new source file (written to the file, not reloaded)."""
        source = make_source(self.tmp_path, f"{name}.raw")
        self.jobs[name] = {
            "host": host,
            "schedule": "default",
            "source": {"type": "file", "path": str(source)},
            **({"freeze-command": freeze} if freeze else {}),
        }
        self.write()
        return source

    def remove_job(self, name: str) -> None:
        del self.jobs[name]
        self.write()

    def write(self) -> config_module.Config:
        document = {
            "global": {"base-dir": str(self.tmp_path / "repo"), "worker-limit": 1},
            "hosts": {
                name: {"backupd": "127.0.0.1:1", "restored": "127.0.0.1:2"}
                for name in (HOST, "backup02")
            },
            "schedules": {"default": {"hourly": {"interval": "1h", "keep": 24}}},
            "jobs": self.jobs,
        }
        self.path.write_text(yaml.safe_dump(document))
        return config_module.load(str(self.path))


class Client:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.backup = backup_pb2_grpc.BackupServiceStub(channel)
        self.operations = operations_pb2_grpc.OperationServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)

    async def wait(self, name: str) -> resources_pb2.Operation:
        last = resources_pb2.Operation()
        async for reply in self.operations.WatchOperation(
            operations_pb2.WatchOperationRequest(name=name), timeout=60
        ):
            last = reply.operation
        return last

    async def back_up(self, job: str, *tags: str) -> resources_pb2.Operation:
        started = await self.backup.StartBackup(
            pb.StartBackupRequest(job=job, tags=list(tags or ["hourly"]))
        )
        done = await self.wait(started.operation.name)
        assert done.state == resources_pb2.OPERATION_STATE_SUCCEEDED, done.error
        return done

    async def refused(self, method: str, request: object) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await getattr(self.backup, method)(request)
        return caught.value


@dataclass
class Served:
    """backupd of host backup01 on port 0, its config file (vm-a configured) and a client."""

    client: Client
    daemon: GrpcDaemon
    config: ConfigFile
    worker: BackupWorker

    async def reload(self) -> None:
        """What SIGHUP does."""
        await self.daemon.reload()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    config = ConfigFile(tmp_path)
    config.add_job("vm-a")
    daemon, worker = build(config.write(), HOST, "127.0.0.1:0")
    port = await daemon.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Served(Client(channel), daemon, config, worker)
    await daemon.stop(grace=1)


async def test_backup_round_trip_over_grpc(served: Served) -> None:
    client = served.client
    source = served.config.add_job("vm-web01")
    await served.reload()
    started = await client.backup.StartBackup(
        pb.StartBackupRequest(job="vm-web01", tags=["hourly"])
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
    job_file = yaml.safe_load((Path(revision.path).parent / "job.yaml").read_text())
    assert job_file["host"] == HOST and job_file["source"]["path"] == str(source)

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
    assert host.host == HOST and host.free_bytes > 0 and host.worker_limit == 1

    await client.backup.DeleteRevision(
        pb.DeleteRevisionRequest(
            job="vm-web01", revision_id=done.revision_id, confirm_revision_id=done.revision_id
        )
    )
    assert not (
        await client.backup.ListRevisions(pb.ListRevisionsRequest(job="vm-web01"))
    ).revisions


async def test_second_start_returns_the_running_operation_and_limit_applies(
    served: Served,
) -> None:
    client = served.client
    served.config.add_job("vm-slow", freeze="sleep 2")
    served.config.add_job("vm-other")
    await served.reload()
    slow = pb.StartBackupRequest(job="vm-slow", tags=["hourly"])
    first = await client.backup.StartBackup(slow)
    again = await client.backup.StartBackup(slow)
    assert first.started and not again.started
    assert again.operation.name == first.operation.name

    refused = await client.refused(
        "StartBackup", pb.StartBackupRequest(job="vm-other", tags=["hourly"])
    )
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "worker-limit" in (refused.details() or "")

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


# --- only configured jobs, only their own tags -------------------------------------------


@pytest.mark.parametrize("host", [None, "backup02"], ids=["nowhere", "other-host"])
async def test_start_backup_of_a_job_not_configured_here_is_not_found(
    served: Served, host: str | None
) -> None:
    if host is not None:
        served.config.add_job("vm-x", host=host)
        await served.reload()
    refused = await served.client.refused(
        "StartBackup", pb.StartBackupRequest(job="vm-x", tags=["hourly"])
    )
    assert refused.code() == grpc.StatusCode.NOT_FOUND
    details = refused.details() or ""
    assert "'vm-x'" in details and HOST in details and str(served.config.path) in details
    assert not (served.config.tmp_path / "repo" / "vm-x").exists()


async def test_a_job_added_to_the_file_is_backed_up_once_reloaded(served: Served) -> None:
    served.config.add_job("vm-new")
    request = pb.StartBackupRequest(job="vm-new", tags=["hourly"])
    refused = await served.client.refused("StartBackup", request)
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = refused.details() or ""
    assert "'vm-new'" in details and HOST in details and "reload" in details

    await served.reload()
    done = await served.client.back_up("vm-new")
    assert done.revision_id


async def test_sources_and_hooks_come_only_from_the_config(served: Served) -> None:
    """Whatever job a caller names, backupd reads the configured source and runs the
    configured hooks; a job removed from the config can no longer be started."""
    marker = served.config.tmp_path / "frozen"
    source = served.config.add_job("vm-hooked", freeze=f"echo $LIFEBOAT_JOB > {marker}")
    await served.reload()
    done = await served.client.back_up("vm-hooked")
    assert marker.read_text().strip() == "vm-hooked"
    revision = await served.client.backup.GetRevision(
        pb.GetRevisionRequest(job="vm-hooked", revision_id=done.revision_id)
    )
    assert Path(revision.revision.path).read_bytes() == source.read_bytes()

    served.config.remove_job("vm-hooked")
    await served.reload()
    refused = await served.client.refused(
        "StartBackup", pb.StartBackupRequest(job="vm-hooked", tags=["hourly"])
    )
    assert refused.code() == grpc.StatusCode.NOT_FOUND


LONG = "manual:" + "y" * 58  # 65 characters


@pytest.mark.parametrize(
    "tags",
    [
        pytest.param(["weekly"], id="not-in-schedule"),
        pytest.param(["hourly", "daily"], id="one-not-in-schedule"),
        pytest.param([f"manual:t{i}" for i in range(33)], id="33-tags"),
        pytest.param([LONG], id="65-characters"),
        pytest.param(["manual:" + "z" * 10_000], id="10000-characters"),
        pytest.param(["manual:a b"], id="bad-manual"),
        pytest.param([], id="none"),
    ],
)
async def test_start_backup_refuses_tags_outside_the_schedule(
    served: Served, tags: list[str]
) -> None:
    refused = await served.client.refused(
        "StartBackup", pb.StartBackupRequest(job="vm-a", tags=tags)
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.details() or ""
    # The request guard names the element (tags[0]) of a tag too long for any request.
    assert details.startswith(("tags:", "tags[0]:")), details
    assert len(details) < 300, details
    assert LONG not in details
    assert not (served.config.tmp_path / "repo" / "vm-a").exists()


async def test_manual_tags_and_schedule_tags_are_accepted(served: Served) -> None:
    done = await served.client.back_up("vm-a", "manual:x", "hourly")
    assert list(done.tags) == ["hourly", "manual:x"]
    only_manual = await served.client.back_up("vm-a", "manual:before-upgrade")
    assert list(only_manual.tags) == ["manual:before-upgrade"]


async def test_a_long_job_name_is_not_echoed(served: Served) -> None:
    name = "vm-" + "q" * 5000
    refused = await served.client.refused(
        "StartBackup", pb.StartBackupRequest(job=name, tags=["hourly"])
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(refused.details() or "") < 300


async def test_added_tags_obey_the_schedule_while_the_job_is_configured(served: Served) -> None:
    client = served.client
    done = await client.back_up("vm-a")

    def update(*tags: str) -> pb.UpdateRevisionTagsRequest:
        return pb.UpdateRevisionTagsRequest(
            job="vm-a", revision_id=done.revision_id, add_tags=list(tags)
        )

    for tags in (["weekly"], [LONG], [f"manual:t{i}" for i in range(33)]):
        refused = await client.refused("UpdateRevisionTags", update(*tags))
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "add_tags" in (refused.details() or "") and LONG not in (refused.details() or "")
    full = [f"manual:t{i}" for i in range(31)]  # with hourly: 32, the most a revision carries
    assert len((await client.backup.UpdateRevisionTags(update(*full))).revision.tags) == 32
    refused = await client.refused("UpdateRevisionTags", update("manual:one-more"))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "32" in (refused.details() or "")

    served.config.remove_job("vm-a")
    await served.reload()
    refused = await client.refused("UpdateRevisionTags", update("hourly"))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "manual:" in (refused.details() or "")
    kept = await client.backup.UpdateRevisionTags(
        pb.UpdateRevisionTagsRequest(
            job="vm-a", revision_id=done.revision_id, add_tags=["manual:keep"], remove_tags=full
        )
    )
    assert list(kept.revision.tags) == ["hourly", "manual:keep"]


# --- deleting ----------------------------------------------------------------------------


async def test_delete_job_data_only_of_a_job_no_longer_configured(served: Served) -> None:
    client = served.client
    await client.back_up("vm-a")
    request = pb.DeleteJobDataRequest(job="vm-a", confirm_job="vm-a")
    refused = await client.refused("DeleteJobData", request)
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = refused.details() or ""
    assert "'vm-a'" in details and HOST in details and "reload" in details
    listed = await client.backup.ListRevisions(pb.ListRevisionsRequest(job="vm-a"))
    assert len(listed.revisions) == 1

    served.config.remove_job("vm-a")
    refused = await client.refused("DeleteJobData", request)  # not reloaded yet
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    await served.reload()
    deleted = await client.backup.DeleteJobData(request)
    assert deleted.revisions_deleted == 1
    assert not (served.config.tmp_path / "repo" / "vm-a").exists()
    gone = await client.refused("ListRevisions", pb.ListRevisionsRequest(job="vm-a"))
    assert gone.code() == grpc.StatusCode.NOT_FOUND


async def test_delete_revision_must_be_confirmed(served: Served) -> None:
    client = served.client
    done = await client.back_up("vm-a")
    other = done.revision_id[:-4] + ("0000" if not done.revision_id.endswith("0000") else "0001")
    for confirm in ("", other):
        refused = await client.refused(
            "DeleteRevision",
            pb.DeleteRevisionRequest(
                job="vm-a", revision_id=done.revision_id, confirm_revision_id=confirm
            ),
        )
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "confirm_revision_id" in (refused.details() or "")
    by_alias = await client.refused(
        "DeleteRevision",
        pb.DeleteRevisionRequest(job="vm-a", revision_id="last", confirm_revision_id="last"),
    )
    assert by_alias.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a revision id" in (by_alias.details() or "")
    listed = await client.backup.ListRevisions(pb.ListRevisionsRequest(job="vm-a"))
    assert [r.id for r in listed.revisions] == [done.revision_id]

    await client.backup.DeleteRevision(
        pb.DeleteRevisionRequest(
            job="vm-a", revision_id=done.revision_id, confirm_revision_id=done.revision_id
        )
    )
    listed = await client.backup.ListRevisions(pb.ListRevisionsRequest(job="vm-a"))
    assert not listed.revisions


@pytest.mark.parametrize(
    ("method", "request_message", "code", "field"),
    [
        pytest.param(
            "StartBackup",
            pb.StartBackupRequest(tags=["hourly"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "job",
            id="no-job",
        ),
        pytest.param(
            "StartBackup",
            pb.StartBackupRequest(job="../etc", tags=["hourly"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "job",
            id="traversal",
        ),
        pytest.param(
            "StartBackup",
            pb.StartBackupRequest(job="vm-a"),
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
    served: Served,
    method: str,
    request_message: object,
    code: grpc.StatusCode,
    field: str,
) -> None:
    refused = await served.client.refused(method, request_message)
    assert refused.code() == code
    assert field in (refused.details() or "")


async def test_unknown_operation_is_not_found(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.client.operations.GetOperation(operations_pb2.GetOperationRequest(name="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


LONG_NAME = "x" * 4000


@pytest.mark.parametrize(
    ("method", "request_message", "field"),
    [
        pytest.param("ListRevisions", pb.ListRevisionsRequest(job=LONG_NAME), "job", id="list"),
        pytest.param(
            "GetRevision", pb.GetRevisionRequest(job=LONG_NAME, revision_id="last"), "job", id="get"
        ),
        pytest.param("GetJobStatus", pb.GetJobStatusRequest(job=LONG_NAME), "job", id="status"),
        pytest.param("VerifyRevision", pb.VerifyRevisionRequest(job=LONG_NAME), "job", id="verify"),
        pytest.param(
            "UpdateRevisionTags",
            pb.UpdateRevisionTagsRequest(job=LONG_NAME, revision_id="last", remove_tags=["hourly"]),
            "job",
            id="update-tags",
        ),
    ],
)
async def test_a_long_name_is_refused_in_a_short_message(
    served: Served, method: str, request_message: object, field: str
) -> None:
    client = served.client
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(client.backup, method)(request_message)
    details = caught.value.details() or ""
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(f"{field}: ") and len(details) < 300, details


async def test_a_long_revision_id_or_operation_name_is_not_repeated(served: Served) -> None:
    client = served.client
    await client.back_up("vm-a")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.backup.GetRevision(pb.GetRevisionRequest(job="vm-a", revision_id=LONG_NAME))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert details.startswith("revision: ") and len(details) < 300, details
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.operations.GetOperation(operations_pb2.GetOperationRequest(name=LONG_NAME))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(caught.value.details() or "") < 300


# --- status is cheap and never blocks -----------------------------------------------------


async def test_status_calls_never_fail_while_backups_commit(served: Served) -> None:
    """A backup's temporary files are renamed while the job's status is taken."""
    client = served.client
    served.config.add_job("vm-busy")
    await served.reload()
    await client.back_up("vm-busy")
    backups_done = asyncio.Event()
    answered: list[str] = []
    failed: list[str] = []

    async def back_up_repeatedly() -> None:
        for _ in range(15):
            await client.back_up("vm-busy")
        backups_done.set()

    async def ask_repeatedly() -> None:
        while not backups_done.is_set():
            for name, call in (
                ("GetJobStatus", client.backup.GetJobStatus(pb.GetJobStatusRequest(job="vm-busy"))),
                ("ListJobStatuses", client.backup.ListJobStatuses(pb.ListJobStatusesRequest())),
                (
                    "ListRevisions",
                    client.backup.ListRevisions(pb.ListRevisionsRequest(job="vm-busy")),
                ),
            ):
                try:
                    await call
                    answered.append(name)
                except grpc.aio.AioRpcError as error:
                    failed.append(f"{name}: {error.code().name} {error.details()}")

    await asyncio.gather(back_up_repeatedly(), *(ask_repeatedly() for _ in range(8)))
    assert failed == []
    assert len(answered) > 150, len(answered)
    status = await client.backup.GetJobStatus(pb.GetJobStatusRequest(job="vm-busy"))
    assert status.status.revision_count == 16


async def test_status_sees_a_revision_distrusted_by_another_process(served: Served) -> None:
    """What restored writes (its own repository objects, its own lock) shows at once."""
    client = served.client
    done = await client.back_up("vm-a")
    request = pb.GetJobStatusRequest(job="vm-a")
    status = (await client.backup.GetJobStatus(request)).status
    assert status.last_good_revision.id == done.revision_id

    job = Repository(served.config.tmp_path / "repo").job("vm-a")
    with job.lock():
        job.update(replace(job.revision(done.revision_id), trust=Trust.DISTRUSTED))

    status = (await client.backup.GetJobStatus(request)).status
    assert status.last_revision.trust == resources_pb2.TRUST_DISTRUSTED
    assert not status.HasField("last_good_revision")


async def held_backup(served: Served, name: str) -> tuple[str, Path, resources_pb2.Operation]:
    """A job with one revision, and a second backup of it that holds the job's lock
    until the returned file is created (its freeze hook waits for it)."""
    release = served.config.tmp_path / f"{name}.release"
    release.touch()
    served.config.add_job(name, freeze=f"while [ ! -e {release} ]; do sleep 0.01; done")
    await served.reload()
    first = await served.client.back_up(name)
    release.unlink()
    started = await served.client.backup.StartBackup(
        pb.StartBackupRequest(job=name, tags=["hourly"])
    )
    async for reply in served.client.operations.WatchOperation(
        operations_pb2.WatchOperationRequest(name=started.operation.name), timeout=60
    ):
        if reply.operation.state == resources_pb2.OPERATION_STATE_RUNNING:
            break  # it holds the lock from before it runs until it ends
    return first.revision_id, release, started.operation


def delete_request(job: str, revision_id: str) -> pb.DeleteRevisionRequest:
    return pb.DeleteRevisionRequest(
        job=job, revision_id=revision_id, confirm_revision_id=revision_id
    )


async def within_a_second(call: Awaitable[object]) -> None:
    await asyncio.wait_for(call, 1.0)


async def test_the_daemon_answers_while_a_delete_waits_for_a_backups_lock(
    served: Served,
) -> None:
    client = served.client
    revision_id, release, backup = await held_backup(served, "vm-held")
    delete = asyncio.ensure_future(
        client.backup.DeleteRevision(delete_request("vm-held", revision_id))
    )

    for _ in range(3):
        await within_a_second(client.health.Check(health_pb2.HealthCheckRequest()))
        await within_a_second(
            client.operations.ListOperations(operations_pb2.ListOperationsRequest())
        )
        await within_a_second(client.backup.GetJobStatus(pb.GetJobStatusRequest(job="vm-held")))
    assert not delete.done(), "the backup holds the job's lock"

    release.touch()
    await asyncio.wait_for(delete, 60)
    assert (await client.wait(backup.name)).state == resources_pb2.OPERATION_STATE_SUCCEEDED
    listed = await client.backup.ListRevisions(pb.ListRevisionsRequest(job="vm-held"))
    assert revision_id not in [revision.id for revision in listed.revisions]


async def test_a_delete_whose_caller_gave_up_waiting_is_not_done(served: Served) -> None:
    client = served.client
    revision_id, release, backup = await held_backup(served, "vm-held")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.backup.DeleteRevision(delete_request("vm-held", revision_id), timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    release.touch()
    assert (await client.wait(backup.name)).state == resources_pb2.OPERATION_STATE_SUCCEEDED
    # The abandoned wait ends once it has the lock: after that, nothing more can happen.
    await asyncio.to_thread(served.worker.lock_waits.shutdown, wait=True)
    listed = await client.backup.ListRevisions(pb.ListRevisionsRequest(job="vm-held"))
    assert revision_id in [revision.id for revision in listed.revisions]
    log = (served.config.tmp_path / "repo" / "vm-held" / "log").read_text()
    assert "deleted on request" not in log


async def test_reflink_is_probed_at_start_and_reload_not_per_call(xfs_dir: Path) -> None:
    """The probe writes two files into base-dir: none appear while the host is asked."""
    config = ConfigFile(xfs_dir)
    config.add_job("vm-a")
    daemon, _ = build(config.write(), HOST, "127.0.0.1:0")
    port = await daemon.start()
    base_dir = xfs_dir / "repo"
    hour_ago = time.time_ns() - 3600 * 10**9
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = backup_pb2_grpc.BackupServiceStub(channel)
            os.utime(base_dir, ns=(hour_ago, hour_ago))
            for _ in range(10):
                host = await stub.GetHostStatus(pb.GetHostStatusRequest())
                assert host.reflink
            assert base_dir.stat().st_mtime_ns == hour_ago, "no file came or went"
            await daemon.reload()
            assert base_dir.stat().st_mtime_ns > hour_ago, "probed again on reload"
            assert (await stub.GetHostStatus(pb.GetHostStatusRequest())).reflink
    finally:
        await daemon.stop(grace=1)
