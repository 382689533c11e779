"""End to end: the real backupd and restored processes. While every backup slot of the host
is busy (and the restored job's own lock is held by its running backup), a restore
through RestoreService starts at once, and so does one through the `lifeboat` admin
client. In plaintext and over mTLS."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from lifeboat import client
from lifeboat.v1 import (
    backup_pb2,
    backup_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
    resources_pb2,
)
from lifeboat.v1 import restore_pb2 as pb
from lifeboat.v1 import restore_pb2_grpc as pb_grpc
from tests.support.processes import REPO, fleet, free_port
from tests.support.transport import Transport
from tests.test_restore_domain import MiB, write_image

pytestmark = pytest.mark.e2e

RUNNING = resources_pb2.OPERATION_STATE_RUNNING
SUCCEEDED = resources_pb2.OPERATION_STATE_SUCCEEDED
BACKUP_HOLDS_SLOT_SECONDS = 6


def write_config(tmp: Path, backupd: int, restored: int, transport: Transport) -> Path:
    return transport.write(
        tmp / "lifeboat.yaml",
        f"""
global: {{base-dir: {tmp}/repo, worker-limit: 1, restore-targets: [{tmp}/restore]}}
hosts:
  backup01: {{backupd: 127.0.0.1:{backupd}, restored: 127.0.0.1:{restored}}}
schedules:
  default:
    hourly: {{interval: 1h, keep: 24}}
jobs:
  vm-a:
    schedule: default
    source: {{type: file, path: {tmp}/vm-a.raw}}
    # While {tmp}/slow exists, a backup of vm-a holds its slot for a while.
    freeze-command: test ! -e {tmp}/slow || sleep {BACKUP_HOLDS_SLOT_SECONDS}
    restore-within: 1h
  vm-b:
    schedule: default
    source: {{type: file, path: {tmp}/vm-b.raw}}
""",
    )


def finished(stub: operations_pb2_grpc.OperationServiceStub, name: str) -> resources_pb2.Operation:
    """Watch to the end, then read the final state (a watch may stop one update early)."""
    for _ in stub.WatchOperation(operations_pb2.WatchOperationRequest(name=name), timeout=60):
        pass
    deadline = time.monotonic() + 10
    while True:
        operation = stub.GetOperation(operations_pb2.GetOperationRequest(name=name)).operation
        if operation.state not in (resources_pb2.OPERATION_STATE_PENDING, RUNNING):
            return operation
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_restore_never_waits_for_backups(tmp_path: Path, transport: Transport) -> None:
    (tmp_path / "restore").mkdir()
    content = write_image(tmp_path / "vm-a.raw", 64 * MiB, [(0, 40 * MiB), (60 * MiB, MiB)])
    write_image(tmp_path / "vm-b.raw", 8 * MiB, [(0, MiB)])
    ports = {"backupd": free_port(), "restored": free_port()}
    config_path = write_config(tmp_path, ports["backupd"], ports["restored"], transport)
    identity = transport.identity()
    with fleet(tmp_path) as running:
        backupd = running.start(
            "backupd.cli",
            f"127.0.0.1:{ports['backupd']}",
            *("--config", str(config_path)),
            identity=identity,
        )
        restored = running.start(
            "restored.cli",
            f"127.0.0.1:{ports['restored']}",
            *("--config", str(config_path)),
            identity=identity,
        )
        transport.assert_served(backupd.address)
        transport.assert_served(restored.address)
        with (
            client.channel(backupd.address, identity) as backup_channel,
            client.channel(restored.address, identity) as restore_channel,
        ):
            backups = backup_pb2_grpc.BackupServiceStub(backup_channel)
            backup_operations = operations_pb2_grpc.OperationServiceStub(backup_channel)
            restores = pb_grpc.RestoreServiceStub(restore_channel)
            restore_operations = operations_pb2_grpc.OperationServiceStub(restore_channel)

            def start_backup(job: str) -> resources_pb2.Operation:
                request = backup_pb2.StartBackupRequest(job=job, tags=["hourly"])
                return backups.StartBackup(request, timeout=30).operation

            first = finished(backup_operations, start_backup("vm-a").name)
            assert first.state == SUCCEEDED, first.error

            # The only backup slot, and vm-a's job lock, are now held for a while.
            (tmp_path / "slow").touch()
            busy = start_backup("vm-a")
            host = backups.GetHostStatus(backup_pb2.GetHostStatusRequest(), timeout=10)
            assert host.running_backups == host.worker_limit == 1
            with pytest.raises(grpc.RpcError) as refused:
                start_backup("vm-b")
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

            target = tmp_path / "restore" / "vm-a.raw"
            started = time.monotonic()
            request = pb.StartRestoreRequest(job="vm-a", latest=True, target=str(target))
            operation = restores.StartRestore(request, timeout=10).operation
            accepted = time.monotonic() - started
            first_byte = None
            for reply in restore_operations.WatchOperation(
                operations_pb2.WatchOperationRequest(name=operation.name), timeout=60
            ):
                if first_byte is None and reply.operation.bytes_done > 0:
                    first_byte = time.monotonic() - started
            restore = finished(restore_operations, operation.name)
            restore_seconds = time.monotonic() - started

            assert restore.state == SUCCEEDED, restore.error
            assert restore.revision_id == first.revision_id
            assert accepted < 1.0 and first_byte is not None and first_byte < 1.0, (
                f"accepted after {accepted:.3f}s, first byte after {first_byte}s"
            )
            assert target.read_bytes() == content
            still = backup_operations.GetOperation(
                operations_pb2.GetOperationRequest(name=busy.name), timeout=10
            ).operation
            assert still.state == RUNNING, "the restore must not have waited for the backup"
            assert restore_seconds < BACKUP_HOLDS_SLOT_SECONDS

            admin_target = tmp_path / "restore" / "vm-a-admin.raw"
            admin = subprocess.run(
                [
                    *(sys.executable, "-m", "lifeboat.admin", "--config", str(config_path)),
                    *("restore", "vm-a", "--tag", "hourly", "--target", str(admin_target)),
                    "--wait",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            assert admin.returncode == 0, admin.stderr + admin.stdout
            assert "restored" in admin.stdout
            assert admin_target.read_bytes() == content

            estimates = restores.ListRestoreEstimates(
                pb.ListRestoreEstimatesRequest(jobs=["vm-a"]), timeout=10
            )
            assert estimates.running_restores == 0
            assert estimates.throughput_bytes_per_second > 0
            (estimate,) = estimates.estimates
            assert estimate.meets_restore_within
            assert estimate.predicted_duration.ToTimedelta().total_seconds() > 0
            running_restores = restore_operations.ListOperations(
                operations_pb2.ListOperationsRequest(
                    running_only=True, kind=resources_pb2.OPERATION_KIND_RESTORE
                )
            ).operations
            assert list(running_restores) == []

            done = finished(backup_operations, busy.name)
            assert done.state == SUCCEEDED, done.error
        assert restored.terminate() == 0, restored.log()
    assert (tmp_path / "repo" / ".restore-throughput").exists()
