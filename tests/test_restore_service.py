"""RestoreService and restored's OperationService through a real grpc.aio server on port 0,
restoring revisions written by the real backup worker (every kind of target keeps the
contract of test_restore_targets.py; here they are files)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf.duration_pb2 import Duration

from lifeboat import config as config_module
from lifeboat.admin import restore as admin_restore
from lifeboat.model import Job
from lifeboat.repository import Repository
from lifeboat.revision import Trust
from lifeboat.v1 import operations_pb2, operations_pb2_grpc, resources_pb2
from lifeboat.v1 import restore_pb2 as pb
from lifeboat.v1 import restore_pb2_grpc as pb_grpc
from restored.server import build
from restored.throughput import FILE_NAME
from restored.worker import RestoreWorker
from tests.support.harness import Harness
from tests.support.images import flip_byte
from tests.test_restore_domain import BLOCK, KiB, MiB, back_up, write_image

SUCCEEDED = resources_pb2.OPERATION_STATE_SUCCEEDED
FAILED = resources_pb2.OPERATION_STATE_FAILED
CANCELLED = resources_pb2.OPERATION_STATE_CANCELLED
SIZE = 8 * MiB
EXTENTS = [(0, 300 * KiB), (3 * MiB, 1 * MiB), (SIZE - 64 * KiB, 64 * KiB)]


@dataclasses.dataclass
class Restored:
    """One in-process restored on port 0 with a repository filled by the real worker."""

    tmp: Path
    base_dir: Path
    targets: Path
    address: str
    channel: grpc.aio.Channel
    worker: RestoreWorker
    harness: Harness
    config: config_module.Config

    @property
    def stub(self) -> pb_grpc.RestoreServiceStub:
        return pb_grpc.RestoreServiceStub(self.channel)

    @property
    def operations(self) -> operations_pb2_grpc.OperationServiceStub:
        return operations_pb2_grpc.OperationServiceStub(self.channel)

    def job(self, name: str) -> Job:
        return self.config.jobs[name]

    async def start(self, **fields: Any) -> resources_pb2.Operation:
        reply = await self.stub.StartRestore(pb.StartRestoreRequest(**fields))
        return reply.operation

    async def wait(self, name: str) -> resources_pb2.Operation:
        """Watch until the end; the final state is read with GetOperation since a watch
        can end on the update before the final one (OperationRegistry.watch)."""
        async for _ in self.operations.WatchOperation(
            operations_pb2.WatchOperationRequest(name=name)
        ):
            pass
        while True:
            reply = await self.operations.GetOperation(
                operations_pb2.GetOperationRequest(name=name)
            )
            if reply.operation.state not in (
                resources_pb2.OPERATION_STATE_PENDING,
                resources_pb2.OPERATION_STATE_RUNNING,
            ):
                return reply.operation
            await asyncio.sleep(0.01)

    async def restore(self, **fields: Any) -> resources_pb2.Operation:
        return await self.wait((await self.start(**fields)).name)


def fleet_config(tmp: Path, restored_port: int, extra_targets: list[str]) -> dict[str, Any]:
    return {
        "global": {
            "base-dir": str(tmp / "repo"),
            "restore-targets": [str(tmp / "restore"), *extra_targets],
            "restore-within": "4h",
        },
        "hosts": {
            "backup01": {
                "backupd": "127.0.0.1:1",
                "restored": f"127.0.0.1:{restored_port}",
            }
        },
        "schedules": {"default": {"hourly": {"interval": "1h"}, "daily": {"interval": "1d"}}},
        "jobs": {
            "vm-a": {
                "schedule": "default",
                "source": {"type": "file", "path": str(tmp / "vm-a.raw")},
                "restore-within": "1s",
            },
            "vm-b": {
                "schedule": "default",
                "source": {"type": "file", "path": str(tmp / "vm-b.raw")},
            },
        },
    }


@contextlib.asynccontextmanager
async def running_restored(
    tmp: Path, extra_targets: list[str] | None = None, jobs: dict[str, Any] | None = None
) -> AsyncIterator[Restored]:
    (tmp / "restore").mkdir(exist_ok=True)
    (tmp / "repo").mkdir(exist_ok=True)
    document = fleet_config(tmp, 9412, extra_targets or [])
    document["jobs"].update(jobs or {})
    config = config_module.parse(document, str(tmp / "lifeboat.yaml"))
    daemon, worker = build(config, "backup01", "127.0.0.1:0")
    worker.distruster.retry_interval = 0.05
    port = await daemon.start()
    address = f"127.0.0.1:{port}"
    # gRPC's initial flow-control window only: a held stream stalls after 64 KiB, where
    # a window grown to the bandwidth-delay product takes in all of a busy machine's
    # revision and lets the stream end.
    channel = grpc.aio.insecure_channel(address, options=[("grpc.http2.bdp_probe", 0)])
    harness = Harness(tmp / "repo")
    try:
        yield Restored(
            tmp, tmp / "repo", tmp / "restore", address, channel, worker, harness, config
        )
    finally:
        await channel.close()
        await daemon.stop(0)


@pytest.fixture
async def restored(tmp_path: Path) -> AsyncIterator[Restored]:
    async with running_restored(tmp_path) as running:
        yield running


async def two_revisions(restored: Restored) -> tuple[str, bytes, str, bytes]:
    """vm-a: a first revision tagged daily, then a changed second one tagged hourly."""
    source = restored.tmp / "vm-a.raw"
    first = write_image(source, SIZE, EXTENTS)
    first_id = await back_up(restored.harness, restored.job("vm-a"), ("daily",))
    with source.open("r+b") as image:
        image.seek(5 * MiB)
        image.write(b"changed!" * 4096)
    second = source.read_bytes()
    second_id = await back_up(restored.harness, restored.job("vm-a"), ("hourly",))
    return first_id, first, second_id, second


async def held_stream(restored: Restored) -> Any:
    """A ReadRevision call of vm-b (32 MiB of data) read only once: it keeps running while
    flow control stops the server (needs `big_revision` first)."""
    request = pb.ReadRevisionRequest(job="vm-b", revision_id="last", chunk_size=4096)
    stream = restored.stub.ReadRevision(request)
    await stream.read()
    return stream


async def big_revision(restored: Restored) -> None:
    write_image(restored.tmp / "vm-b.raw", 32 * MiB, [(0, 32 * MiB)])
    await back_up(restored.harness, restored.job("vm-b"))


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


async def expect_error(call: Any, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == code, raised.value.details()
    return raised.value.details() or ""


# --- files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        pytest.param({"latest": True}, "second", id="latest"),
        pytest.param({}, "second", id="nothing-chosen"),
        pytest.param({"tag": "daily"}, "first", id="tag"),
        pytest.param({"revision_id": "first"}, "first", id="revision-id"),
    ],
)
async def test_restore_to_file_is_identical_sparse_and_reported(
    restored: Restored, choice: dict[str, Any], expected: str
) -> None:
    first_id, first, second_id, second = await two_revisions(restored)
    ids = {"first": first_id, "second": second_id}
    if "revision_id" in choice:
        choice = {"revision_id": ids[choice["revision_id"]]}
    target = restored.targets / "vm-a.raw"

    operation = await restored.restore(job="vm-a", target=str(target), **choice)

    assert operation.state == SUCCEEDED, operation.error
    assert target.read_bytes() == {"first": first, "second": second}[expected]
    assert allocated(target) < SIZE // 2, "holes must stay holes"
    assert operation.kind == resources_pb2.OPERATION_KIND_RESTORE
    assert operation.revision_id == ids[expected]
    assert operation.job == "vm-a" and operation.host == "backup01"
    assert operation.target == str(target)
    assert 0 < operation.bytes_done == operation.bytes_total < SIZE
    assert operation.throughput_bytes_per_second > 0
    assert operation.restore_within.ToTimedelta() == dt.timedelta(seconds=1)
    assert leftovers(restored.targets) == []
    log = (restored.base_dir / "vm-a" / "log").read_text()
    assert f"restore {operation.name} to {target} succeeded" in log


async def test_holes_stay_holes_on_xfs(xfs_dir: Path) -> None:
    """XFS preallocates past the end of a growing file; a restore must not leave that
    space inside the holes it skipped."""
    size = 256 * MiB
    extents = [(0, 24 * MiB), (100 * MiB, 24 * MiB), (200 * MiB, 4 * MiB)]
    async with running_restored(xfs_dir) as restored:
        content = write_image(xfs_dir / "vm-b.raw", size, extents)
        await back_up(restored.harness, restored.job("vm-b"))
        target = restored.targets / "vm-b.raw"
        operation = await restored.restore(job="vm-b", target=str(target))
        assert operation.state == SUCCEEDED, operation.error
        assert target.read_bytes() == content
        data = sum(length for _, length in extents)
        assert allocated(target) <= data + MiB


@pytest.mark.parametrize(
    "where",
    [
        pytest.param("{tmp}/outside/vm.raw", id="outside"),
        pytest.param("{tmp}/restore/../outside/vm.raw", id="dotdot"),
        pytest.param("{tmp}/restore/escape/vm.raw", id="symlink-escape"),
        pytest.param("{tmp}/repo/vm-a/copy.raw", id="repository"),
        pytest.param("rbd:rbd/vm-a", id="rbd-pool-not-allowed"),
    ],
)
async def test_target_outside_the_allowed_prefixes_is_denied_and_nothing_written(
    restored: Restored, where: str
) -> None:
    await two_revisions(restored)
    outside = restored.tmp / "outside"
    outside.mkdir()
    (restored.targets / "escape").symlink_to(outside)
    repo_before = sorted(p.name for p in (restored.base_dir / "vm-a").iterdir())

    details = await expect_error(
        restored.start(job="vm-a", target=where.format(tmp=restored.tmp)),
        grpc.StatusCode.PERMISSION_DENIED,
    )

    assert "restore-targets" in details or "repository" in details
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in restored.targets.iterdir()) == ["escape"]
    assert sorted(p.name for p in (restored.base_dir / "vm-a").iterdir()) == repo_before
    listed = await restored.operations.ListOperations(operations_pb2.ListOperationsRequest())
    assert list(listed.operations) == []


async def test_existing_target_needs_overwrite(restored: Restored) -> None:
    _, _, _, second = await two_revisions(restored)
    target = restored.targets / "vm-a.raw"
    target.write_bytes(b"old content" * 1000)
    os.chmod(target, 0o640)

    details = await expect_error(
        restored.start(job="vm-a", target=str(target)), grpc.StatusCode.ALREADY_EXISTS
    )
    assert "overwrite" in details
    assert target.read_bytes() == b"old content" * 1000

    operation = await restored.restore(job="vm-a", target=str(target), overwrite=True)
    assert operation.state == SUCCEEDED, operation.error
    assert target.read_bytes() == second
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert leftovers(restored.targets) == []


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        pytest.param({"target": "/x"}, grpc.StatusCode.INVALID_ARGUMENT, "job", id="no-job"),
        pytest.param(
            {"job": "vm-zz", "target": "/x"}, grpc.StatusCode.NOT_FOUND, "vm-zz", id="unknown-job"
        ),
        pytest.param({"job": "vm-a"}, grpc.StatusCode.INVALID_ARGUMENT, "target", id="no-target"),
        pytest.param(
            {"job": "vm-a", "target": "vm.raw"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "target",
            id="relative-target",
        ),
        pytest.param(
            {"job": "vm-a", "target": "/x", "revision_id": "yesterday"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "revision_id",
            id="bad-revision-id",
        ),
        pytest.param(
            {"job": "vm-a", "target": "/x", "revision_id": "20200101T000000Z-0000"},
            grpc.StatusCode.NOT_FOUND,
            "20200101T000000Z-0000",
            id="unknown-revision",
        ),
        pytest.param(
            {"job": "vm-a", "target": "/x", "tag": "weekly"},
            grpc.StatusCode.NOT_FOUND,
            "weekly",
            id="unknown-tag",
        ),
        pytest.param(
            {"job": "vm-a", "target": "{tmp}/restore/nodir/vm.raw"},
            grpc.StatusCode.NOT_FOUND,
            "nodir",
            id="missing-directory",
        ),
        *(
            pytest.param(
                {"job": "vm-a", "target": "{tmp}/restore/vm.raw", "restore_within": within},
                grpc.StatusCode.INVALID_ARGUMENT,
                "restore_within: must be between 1s and 100 years",
                id=f"restore-within-{name}",
            )
            for name, within in [
                ("negative", Duration(seconds=-5)),
                ("half-a-second", Duration(nanos=500_000_000)),
                ("over-100-years", Duration(seconds=36526 * 86400)),
                ("overflowing", Duration(seconds=2**62)),
            ]
        ),
    ],
)
async def test_bad_start_requests(
    restored: Restored, fields: dict[str, Any], code: grpc.StatusCode, field: str
) -> None:
    await two_revisions(restored)
    if "target" in fields:
        fields["target"] = fields["target"].format(tmp=restored.tmp)
    details = await expect_error(restored.start(**fields), code)
    assert field in details


LONG = "x" * 4000


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        pytest.param(
            {"job": LONG, "target": "/x"}, grpc.StatusCode.INVALID_ARGUMENT, "job", id="job"
        ),
        pytest.param(
            {"job": "vm-a", "target": "/x", "revision_id": LONG},
            grpc.StatusCode.INVALID_ARGUMENT,
            "revision_id",
            id="revision-id",
        ),
        pytest.param(
            {"job": "vm-a", "target": "/x", "tag": LONG}, grpc.StatusCode.NOT_FOUND, "", id="tag"
        ),
        pytest.param(
            {"job": "vm-a", "target": "/" + LONG},
            grpc.StatusCode.PERMISSION_DENIED,
            "",
            id="target-elsewhere",
        ),
        pytest.param(
            {"job": "vm-a", "target": "{tmp}/restore/" + LONG[:200] + "/vm.raw"},
            grpc.StatusCode.NOT_FOUND,
            "",
            id="target-directory",
        ),
        pytest.param(
            {"job": "vm-a", "target": "rbd:" + LONG},
            grpc.StatusCode.INVALID_ARGUMENT,
            "target",
            id="rbd-target",
        ),
    ],
)
async def test_long_input_is_never_repeated_in_full(
    restored: Restored, fields: dict[str, Any], code: grpc.StatusCode, field: str
) -> None:
    await two_revisions(restored)
    fields["target"] = fields["target"].format(tmp=restored.tmp)
    details = await expect_error(restored.start(**fields), code)
    assert details.startswith(f"{field}: " if field else "") and len(details) < 300, details


async def test_long_names_to_streams_and_estimates_are_refused_shortly(
    restored: Restored,
) -> None:
    request = pb.ReadRevisionRequest(job=LONG, revision_id="last")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in restored.stub.ReadRevision(request):
            pass
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(raised.value.details() or "") < 300
    details = await expect_error(
        restored.stub.ListRestoreEstimates(pb.ListRestoreEstimatesRequest(jobs=[LONG])),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details.startswith("job: ") and len(details) < 300, details


async def test_reload_applies_new_restore_targets(tmp_path: Path) -> None:
    (tmp_path / "restore").mkdir()
    (tmp_path / "other").mkdir()
    path = tmp_path / "lifeboat.yaml"
    path.write_text(yaml.safe_dump(fleet_config(tmp_path, 9412, [])))
    daemon, _ = build(config_module.load(str(path)), "backup01", "127.0.0.1:0")
    port = await daemon.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RestoreServiceStub(channel)
            content = write_image(tmp_path / "vm-a.raw", MiB, [(0, MiB)])
            harness = Harness(tmp_path / "repo")
            await back_up(harness, config_module.load(str(path)).jobs["vm-a"])
            request = pb.StartRestoreRequest(job="vm-a", target=str(tmp_path / "other" / "a.raw"))
            await expect_error(stub.StartRestore(request), grpc.StatusCode.PERMISSION_DENIED)

            path.write_text(yaml.safe_dump(fleet_config(tmp_path, 9412, [str(tmp_path / "other")])))
            await daemon.reload()
            operation = (await stub.StartRestore(request)).operation
            ops = operations_pb2_grpc.OperationServiceStub(channel)
            async for _ in ops.WatchOperation(
                operations_pb2.WatchOperationRequest(name=operation.name)
            ):
                pass
            deadline = time.monotonic() + 10
            while not (tmp_path / "other" / "a.raw").exists():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            assert (tmp_path / "other" / "a.raw").read_bytes() == content
    finally:
        await daemon.stop(0)


# --- corruption -----------------------------------------------------------------------


async def test_corrupt_stored_block_fails_the_restore_and_distrusts_the_revision(
    restored: Restored,
) -> None:
    _, _, second_id, _ = await two_revisions(restored)
    flip_byte(restored.base_dir / "vm-a" / second_id, 3 * MiB + 5 * BLOCK + 7)
    target = restored.targets / "vm-a.raw"

    operation = await restored.restore(job="vm-a", target=str(target))

    assert operation.state == FAILED
    assert str(3 * MiB + 5 * BLOCK) in operation.error
    assert "revision distrusted" in operation.error
    assert not target.exists()
    assert leftovers(restored.targets) == []
    meta = Repository(restored.base_dir).job("vm-a").revision(second_id)
    assert meta.trust == Trust.DISTRUSTED
    assert meta.verification.mismatched_offsets == (3 * MiB + 5 * BLOCK,)
    # The latest good revision is now the first one; the distrusted one is refused.
    await expect_error(
        restored.start(job="vm-a", target=str(target), revision_id=second_id),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    fallback = await restored.restore(job="vm-a", target=str(target))
    assert fallback.state == SUCCEEDED and fallback.revision_id != second_id


async def test_corruption_found_while_a_backup_holds_the_job_lock(restored: Restored) -> None:
    _, _, second_id, _ = await two_revisions(restored)
    flip_byte(restored.base_dir / "vm-a" / second_id, 0)
    backup = Repository(restored.base_dir).job("vm-a")
    with backup.lock():  # as a running backup of vm-a would
        started = time.monotonic()
        operation = await restored.restore(job="vm-a", target=str(restored.targets / "x.raw"))
        assert time.monotonic() - started < 5
        assert operation.state == FAILED
        assert "once the running backup releases the job lock" in operation.error
        assert Repository(restored.base_dir).job("vm-a").revision(second_id).trust == Trust.TRUSTED
    deadline = time.monotonic() + 10
    while restored.worker.distruster.pending() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert Repository(restored.base_dir).job("vm-a").revision(second_id).trust == Trust.DISTRUSTED


# --- cancel, limits, parallel ---------------------------------------------------------


async def test_cancel_removes_the_partial_file(restored: Restored) -> None:
    write_image(restored.tmp / "vm-b.raw", 64 * MiB, [(0, 64 * MiB)])
    await back_up(restored.harness, restored.job("vm-b"))
    restored.worker.settings = dataclasses.replace(restored.worker.settings, chunk_size=BLOCK)
    target = restored.targets / "vm-b.raw"
    operation = await restored.start(job="vm-b", target=str(target))
    details = await expect_error(
        restored.start(job="vm-b", target=str(target), overwrite=True),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert f"being restored by {operation.name}" in details
    await restored.operations.CancelOperation(
        operations_pb2.CancelOperationRequest(name=operation.name)
    )
    final = await restored.wait(operation.name)
    assert final.state == CANCELLED, final.error
    assert not target.exists()
    assert leftovers(restored.targets) == []


async def slow_restore(restored: Restored, name: str) -> resources_pb2.Operation:
    """A restore of vm-b (64 MiB of data) in one-block chunks: still running when the next
    call comes."""
    write_image(restored.tmp / "vm-b.raw", 64 * MiB, [(0, 64 * MiB)])
    await back_up(restored.harness, restored.job("vm-b"))
    restored.worker.settings = dataclasses.replace(restored.worker.settings, chunk_size=BLOCK)
    return await restored.start(job="vm-b", target=str(restored.targets / name))


async def test_parallel_restores_and_the_limit(restored: Restored) -> None:
    _, _, _, second = await two_revisions(restored)
    restored.worker.settings = dataclasses.replace(restored.worker.settings, restore_limit=3)
    finals = await asyncio.gather(
        *(
            restored.restore(job="vm-a", target=str(restored.targets / f"p{i}.raw"))
            for i in range(3)
        )
    )
    assert [f.state for f in finals] == [SUCCEEDED] * 3
    for index in range(3):
        assert (restored.targets / f"p{index}.raw").read_bytes() == second

    restored.worker.settings = dataclasses.replace(restored.worker.settings, restore_limit=1)
    running = await slow_restore(restored, "big.raw")
    details = await expect_error(
        restored.start(job="vm-a", target=str(restored.targets / "p9.raw")),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert "restore-limit 1" in details
    assert not (restored.targets / "p9.raw").exists()
    await restored.operations.CancelOperation(
        operations_pb2.CancelOperationRequest(name=running.name)
    )
    assert (await restored.wait(running.name)).state == CANCELLED


async def test_streams_have_a_limit_of_their_own(restored: Restored) -> None:
    """Held streams fill stream-limit, never restore-limit: a restore still starts."""
    _, _, _, second = await two_revisions(restored)
    await big_revision(restored)
    settings = restored.worker.settings
    restored.worker.settings = dataclasses.replace(settings, restore_limit=1, stream_limit=3)
    streams = [await held_stream(restored) for _ in range(3)]
    request = pb.ReadRevisionRequest(job="vm-b", revision_id="last")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in restored.stub.ReadRevision(request):
            pass
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "stream-limit 3" in (refused.value.details() or "")

    target = restored.targets / "while-streaming.raw"
    final = await restored.restore(job="vm-a", target=str(target))
    assert final.state == SUCCEEDED, final.error
    assert target.read_bytes() == second
    for stream in streams:
        stream.cancel()


# --- streaming ------------------------------------------------------------------------


async def test_read_revision_streams_data_without_holes(restored: Restored) -> None:
    _, _, second_id, second = await two_revisions(restored)
    rebuilt = bytearray(SIZE)
    messages = []
    request = pb.ReadRevisionRequest(job="vm-a", revision_id="last", chunk_size=64 * KiB)
    async for message in restored.stub.ReadRevision(request):
        messages.append((message.offset, len(message.data), message.size))
        rebuilt[message.offset : message.offset + len(message.data)] = message.data
    assert bytes(rebuilt) == second
    assert messages[0][2] == SIZE and all(size == 0 for _, _, size in messages[1:])
    assert all(0 < length <= 64 * KiB for _, length, _ in messages)
    streamed = sum(length for _, length, _ in messages)
    assert streamed <= sum(length for _, length in EXTENTS) + 2 * MiB
    listed = await restored.operations.ListOperations(
        operations_pb2.ListOperationsRequest(kind=resources_pb2.OPERATION_KIND_STREAM)
    )
    (operation,) = listed.operations
    assert operation.target.startswith("stream:") and operation.revision_id == second_id
    assert operation.state == SUCCEEDED
    restores = await restored.operations.ListOperations(
        operations_pb2.ListOperationsRequest(kind=resources_pb2.OPERATION_KIND_RESTORE)
    )
    assert list(restores.operations) == []


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        pytest.param({"chunk_size": 10}, grpc.StatusCode.INVALID_ARGUMENT, "chunk_size", id="tiny"),
        pytest.param(
            {"chunk_size": 64 * MiB}, grpc.StatusCode.INVALID_ARGUMENT, "chunk_size", id="huge"
        ),
        pytest.param(
            {"revision_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "revision_id", id="no-revision"
        ),
        pytest.param({"job": "vm-zz"}, grpc.StatusCode.NOT_FOUND, "vm-zz", id="unknown-job"),
        pytest.param(
            {"chunk_size": -4096}, grpc.StatusCode.INVALID_ARGUMENT, "chunk_size", id="negative"
        ),
    ],
)
async def test_bad_read_requests(
    restored: Restored, fields: dict[str, Any], code: grpc.StatusCode, field: str
) -> None:
    await two_revisions(restored)
    request = pb.ReadRevisionRequest(**{"job": "vm-a", "revision_id": "last", **fields})
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in restored.stub.ReadRevision(request):
            pass
    assert raised.value.code() == code
    assert field in (raised.value.details() or "")


async def test_stream_of_a_corrupt_revision_ends_with_data_loss(restored: Restored) -> None:
    _, _, second_id, _ = await two_revisions(restored)
    flip_byte(restored.base_dir / "vm-a" / second_id, 3 * MiB)
    request = pb.ReadRevisionRequest(job="vm-a", revision_id=second_id)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in restored.stub.ReadRevision(request):
            pass
    assert raised.value.code() == grpc.StatusCode.DATA_LOSS
    assert str(3 * MiB) in (raised.value.details() or "")
    assert Repository(restored.base_dir).job("vm-a").revision(second_id).trust == Trust.DISTRUSTED


# --- what the scheduler and the monitor ask -------------------------------------------


async def test_running_restores_are_listed_for_the_scheduler(restored: Restored) -> None:
    """Restores, not streams: the scheduler defers backups while restores run."""
    await big_revision(restored)
    restores = operations_pb2.ListOperationsRequest(
        running_only=True, kind=resources_pb2.OPERATION_KIND_RESTORE
    )
    streams = operations_pb2.ListOperationsRequest(
        running_only=True, kind=resources_pb2.OPERATION_KIND_STREAM
    )
    assert list((await restored.operations.ListOperations(restores)).operations) == []
    stream = await held_stream(restored)

    assert list((await restored.operations.ListOperations(restores)).operations) == []
    (running_stream,) = (await restored.operations.ListOperations(streams)).operations
    assert running_stream.job == "vm-b"
    assert running_stream.state == resources_pb2.OPERATION_STATE_RUNNING
    estimates = await restored.stub.ListRestoreEstimates(pb.ListRestoreEstimatesRequest())
    assert estimates.running_restores == 0

    restore = await slow_restore(restored, "vm-b.raw")
    running = (await restored.operations.ListOperations(restores)).operations
    assert [op.name for op in running] == [restore.name]
    backups = operations_pb2.ListOperationsRequest(
        running_only=True, kind=resources_pb2.OPERATION_KIND_BACKUP
    )
    assert list((await restored.operations.ListOperations(backups)).operations) == []
    estimates = await restored.stub.ListRestoreEstimates(pb.ListRestoreEstimatesRequest())
    assert estimates.running_restores == 1
    assert (await restored.wait(restore.name)).state == SUCCEEDED

    stream.cancel()
    deadline = time.monotonic() + 10
    while (await restored.operations.ListOperations(streams)).operations:
        assert time.monotonic() < deadline, "the abandoned stream must end its operation"
        await asyncio.sleep(0.02)
    estimates = await restored.stub.ListRestoreEstimates(pb.ListRestoreEstimatesRequest())
    assert estimates.running_restores == 0


async def test_estimates_from_measured_throughput(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    slow = {"samples": [{"data-bytes": 10 * MiB, "seconds": 10.0, "time": "2026-01-01"}]}
    (tmp_path / "repo" / FILE_NAME).write_text(yaml.safe_dump(slow))
    async with running_restored(tmp_path) as restored:
        _, _, second_id, _ = await two_revisions(restored)
        reply = await restored.stub.ListRestoreEstimates(pb.ListRestoreEstimatesRequest())
        assert reply.throughput_bytes_per_second == pytest.approx(MiB)
        by_job = {e.job: e for e in reply.estimates}
        assert sorted(by_job) == ["vm-a", "vm-b"]
        a, b = by_job["vm-a"], by_job["vm-b"]
        assert a.revision_id == second_id and a.size == SIZE
        assert 0 < a.data_bytes < SIZE
        predicted = a.predicted_duration.ToTimedelta().total_seconds()
        assert predicted == pytest.approx(a.data_bytes / MiB, rel=0.01)
        assert a.restore_within.ToTimedelta() == dt.timedelta(seconds=1)
        assert predicted > 1 and not a.meets_restore_within
        assert b.size == 0 and b.revision_id == "" and not b.meets_restore_within
        assert b.restore_within.ToTimedelta() == dt.timedelta(hours=4)

        operation = await restored.restore(job="vm-a", target=str(restored.targets / "a.raw"))
        assert operation.state == SUCCEEDED, operation.error
        reply = await restored.stub.ListRestoreEstimates(
            pb.ListRestoreEstimatesRequest(jobs=["vm-a"])
        )
        assert reply.throughput_bytes_per_second > MiB
        (a,) = reply.estimates
        assert a.predicted_duration.ToTimedelta().total_seconds() < predicted
        await expect_error(
            restored.stub.ListRestoreEstimates(pb.ListRestoreEstimatesRequest(jobs=["vm-zz"])),
            grpc.StatusCode.NOT_FOUND,
        )
        await expect_error(
            restored.stub.ListRestoreEstimates(pb.ListRestoreEstimatesRequest(jobs=["../x"])),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    samples = yaml.safe_load((tmp_path / "repo" / FILE_NAME).read_text())["samples"]
    assert len(samples) == 2


# --- the admin client -----------------------------------------------------------------


async def test_admin_restore_waits_with_progress(
    restored: Restored, capsys: pytest.CaptureFixture[str]
) -> None:
    first_id, first, _, _ = await two_revisions(restored)
    port = restored.address.rsplit(":", 1)[1]
    document = fleet_config(restored.tmp, int(port), [])
    config = config_module.parse(document, str(restored.tmp / "lifeboat.yaml"))
    parser = _admin_parser()
    target = restored.targets / "admin.raw"
    args = parser.parse_args(
        ["restore", "vm-a", "--revision", first_id, "--target", str(target), "--wait"]
    )
    code = await asyncio.to_thread(args.func, args, config)
    out = capsys.readouterr().out
    assert code == 0, out
    assert target.read_bytes() == first
    assert f"restoring revision {first_id} of vm-a" in out and "restored" in out

    args = parser.parse_args(["restore", "vm-a", "--tag", "daily", "--target", str(target)])
    with pytest.raises(Exception, match="exists"):
        await asyncio.to_thread(args.func, args, config)


def _admin_parser() -> Any:
    import argparse

    parser = argparse.ArgumentParser(prog="lifeboat")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.set_defaults(identity=None)
    admin_restore.register(parser.add_subparsers(dest="command", required=True))
    return parser
