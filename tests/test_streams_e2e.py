"""End to end with the real restored process: ReadRevision streams that stall hold stream
slots only (restores still start, the scheduler sees no restore running) and are cancelled
after stream-idle-timeout; a restore killed with SIGKILL leaves no temporary file once
restored has started again."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from lifeboat import client
from lifeboat import config as config_module
from lifeboat.v1 import operations_pb2, operations_pb2_grpc, resources_pb2
from lifeboat.v1 import restore_pb2 as pb
from lifeboat.v1 import restore_pb2_grpc as pb_grpc
from restored.inflight import DIRECTORY
from restored.targets import TEMPORARY_SUFFIX
from scheduler.remote import GrpcHostClient
from scheduler.settings import SchedulerSettings
from tests.support.harness import Harness
from tests.support.processes import Daemon, Fleet, fleet, free_port
from tests.test_restore_domain import MiB, back_up, file_job, write_image
from tests.test_restore_e2e import finished

pytestmark = pytest.mark.e2e

RUNNING_STREAMS = operations_pb2.ListOperationsRequest(
    running_only=True, kind=resources_pb2.OPERATION_KIND_STREAM
)
RUNNING_RESTORES = operations_pb2.ListOperationsRequest(
    running_only=True, kind=resources_pb2.OPERATION_KIND_RESTORE
)
# Far more data than a flow-control window of a stalled client (FIXED_WINDOW) holds.
STREAMED = 16 * MiB
FIXED_WINDOW = [("grpc.http2.bdp_probe", 0)]
IDLE_TIMEOUT = 2.0


def prepare(tmp: Path, data: int) -> bytes:
    """vm-a backed up into tmp/repo (by the real backup worker): `data` bytes of data in an
    image of twice the size."""
    (tmp / "restore").mkdir()
    content = write_image(tmp / "vm-a.raw", 2 * data, [(0, data // 2), (data, data // 2)])
    asyncio.run(back_up(Harness(tmp / "repo"), file_job("vm-a", tmp / "vm-a.raw")))
    return content


def write_config(tmp: Path, port: int, **limits: Any) -> Path:
    document = {
        "global": {
            "base-dir": str(tmp / "repo"),
            "restore-targets": [str(tmp / "restore")],
            **limits,
        },
        "hosts": {
            "backup01": {"backupd": f"127.0.0.1:{free_port()}", "restored": f"127.0.0.1:{port}"}
        },
        "schedules": {"default": {"hourly": {"interval": "1h"}}},
        "jobs": {
            "vm-a": {
                "schedule": "default",
                "source": {"type": "file", "path": str(tmp / "vm-a.raw")},
            }
        },
    }
    path = tmp / "lifeboat.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def start_restored(running: Fleet, config: Path, port: int) -> Daemon:
    return running.start("restored.cli", f"127.0.0.1:{port}", "--config", str(config))


def stalled_stream(stack: contextlib.ExitStack, address: str) -> Any:
    """A ReadRevision call of vm-a, on a connection of its own, read once and then never.

    The connection keeps gRPC's initial flow-control window (64 KiB): with the window
    grown to the bandwidth-delay product, a busy machine's client takes in 64 MiB."""
    channel = stack.enter_context(grpc.insecure_channel(address, options=FIXED_WINDOW))
    call = pb_grpc.RestoreServiceStub(channel).ReadRevision(
        pb.ReadRevisionRequest(job="vm-a", revision_id="last"), timeout=120
    )
    stack.callback(call.cancel)
    next(call)
    return call


def scheduler_sees_restores(config: Path) -> int:
    """What the scheduler asks before it defers a host's backups."""

    async def ask() -> int:
        host = GrpcHostClient(
            config_module.load(str(config)).host("backup01"), SchedulerSettings(), None
        )
        try:
            return await host.running_restores()
        finally:
            await host.close()

    return asyncio.run(ask())


def test_stalled_streams_take_stream_slots_never_restore_slots(tmp_path: Path) -> None:
    content = prepare(tmp_path, STREAMED)
    port = free_port()
    config = write_config(tmp_path, port, **{"restore-limit": 2, "stream-limit": 4})
    with fleet(tmp_path) as running, contextlib.ExitStack() as stack:
        restored = start_restored(running, config, port)
        channel = stack.enter_context(client.channel(restored.address, None))
        restores = pb_grpc.RestoreServiceStub(channel)
        operations = operations_pb2_grpc.OperationServiceStub(channel)
        for _ in range(4):
            stalled_stream(stack, restored.address)

        with pytest.raises(grpc.RpcError) as refused:
            next(restores.ReadRevision(pb.ReadRevisionRequest(job="vm-a", revision_id="last")))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "stream-limit 4" in (refused.value.details() or "")

        assert len(operations.ListOperations(RUNNING_STREAMS, timeout=10).operations) == 4
        assert list(operations.ListOperations(RUNNING_RESTORES, timeout=10).operations) == []
        estimates = restores.ListRestoreEstimates(pb.ListRestoreEstimatesRequest(), timeout=10)
        assert estimates.running_restores == 0
        assert scheduler_sees_restores(config) == 0

        started = time.monotonic()
        accepted = [
            restores.StartRestore(
                pb.StartRestoreRequest(job="vm-a", target=str(tmp_path / "restore" / name)),
                timeout=10,
            ).operation
            for name in ("first.raw", "second.raw")
        ]
        both_accepted = time.monotonic() - started
        assert both_accepted < 1.0, f"both restore slots free: accepted in {both_accepted:.3f}s"
        for operation in accepted:
            final = finished(operations, operation.name)
            assert final.state == resources_pb2.OPERATION_STATE_SUCCEEDED, final.error
        assert (tmp_path / "restore" / "first.raw").read_bytes() == content
        assert len(operations.ListOperations(RUNNING_STREAMS, timeout=10).operations) == 4


def test_a_stalled_stream_is_cancelled_after_the_idle_timeout(tmp_path: Path) -> None:
    prepare(tmp_path, STREAMED)
    port = free_port()
    limits = {"stream-limit": 1, "stream-idle-timeout": f"{IDLE_TIMEOUT:g}s"}
    config = write_config(tmp_path, port, **limits)
    with fleet(tmp_path) as running, contextlib.ExitStack() as stack:
        restored = start_restored(running, config, port)
        channel = stack.enter_context(client.channel(restored.address, None))
        operations = operations_pb2_grpc.OperationServiceStub(channel)
        stalled = stalled_stream(stack, restored.address)
        stalled_at = time.monotonic()
        while operations.ListOperations(RUNNING_STREAMS, timeout=10).operations:
            assert time.monotonic() - stalled_at < 2 * IDLE_TIMEOUT, "still holds its slot"
            time.sleep(0.05)
        freed = time.monotonic() - stalled_at
        assert freed >= IDLE_TIMEOUT

        (operation,) = operations.ListOperations(
            operations_pb2.ListOperationsRequest(kind=resources_pb2.OPERATION_KIND_STREAM),
            timeout=10,
        ).operations
        assert operation.state == resources_pb2.OPERATION_STATE_CANCELLED
        assert "stream-idle-timeout" in operation.error
        stalled_stream(stack, restored.address)  # the only slot is free again
        with pytest.raises(grpc.RpcError) as ended:
            for _ in stalled:
                pass
        assert ended.value.code() == grpc.StatusCode.CANCELLED
        assert "took no message for 2s (stream-idle-timeout)" in (ended.value.details() or "")
        job_log = (tmp_path / "repo" / "vm-a" / "log").read_text()
        for log in (restored.log(), job_log):
            assert idle_line(log, operation.name).endswith(
                "took no message for 2s (stream-idle-timeout); cancelled"
            ), log


def idle_line(log: str, operation: str) -> str:
    (line,) = [line for line in log.splitlines() if f"{operation}: " in line]
    return line


def temporary_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f".*{TEMPORARY_SUFFIX}"))


def test_kill_9_mid_restore_leaves_no_temporary_file(tmp_path: Path) -> None:
    content = prepare(tmp_path, 256 * MiB)
    targets = tmp_path / "restore"
    kept = targets / "kept.raw"
    kept.write_bytes(b"old content")
    port = free_port()
    config = write_config(tmp_path, port)
    with fleet(tmp_path) as running:
        restored = start_restored(running, config, port)
        with client.channel(restored.address, None) as channel:
            restores = pb_grpc.RestoreServiceStub(channel)
            names = [
                restores.StartRestore(request, timeout=10).operation.name
                for request in (
                    pb.StartRestoreRequest(job="vm-a", target=str(targets / "new.raw")),
                    pb.StartRestoreRequest(job="vm-a", target=str(kept), overwrite=True),
                )
            ]
        restored.process.send_signal(signal.SIGKILL)
        restored.process.wait()
        left = temporary_files(targets)
        assert len(left) == 2, "killed in the middle of both restores"
        assert len(list((tmp_path / "repo" / DIRECTORY).iterdir())) == 2

        again = start_restored(running, config, port)
        assert temporary_files(targets) == []
        assert not (targets / "new.raw").exists()
        assert kept.read_bytes() == b"old content"
        assert list((tmp_path / "repo" / DIRECTORY).iterdir()) == []
        job_log = (tmp_path / "repo" / "vm-a" / "log").read_text()
        for name, target in zip(names, (targets / "new.raw", kept), strict=True):
            (temporary,) = [p for p in left if p.name.startswith(f".{target.name}.")]
            line = (
                f"restore {name} to {target} interrupted by a restart: "
                f"removed temporary file {temporary}"
            )
            assert line in job_log
            assert line in again.log()
        with client.channel(again.address, None) as channel:
            operations = operations_pb2_grpc.OperationServiceStub(channel)
            restores = pb_grpc.RestoreServiceStub(channel)
            request = pb.StartRestoreRequest(job="vm-a", target=str(kept), overwrite=True)
            operation = restores.StartRestore(request, timeout=10).operation
            final = finished(operations, operation.name)
        assert final.state == resources_pb2.OPERATION_STATE_SUCCEEDED, final.error
        assert kept.read_bytes() == content
