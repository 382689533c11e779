"""Faults from below, end to end: a real backupd process whose job's source, or whose
repository, lies on a faultfs mount (tests/support/faultfs.py) that fails reads or writes
with EIO at a chosen offset. The backup fails naming the file and the offset, commits
nothing and leaves nothing behind; older revisions stay intact; once the fault is gone the
next backup succeeds, full or incremental as the parent rule says."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lifeboat import client
from lifeboat.v1 import (
    backup_pb2,
    backup_pb2_grpc,
    operations_pb2_grpc,
    resources_pb2,
)
from tests.support.faultfs import CONTROL
from tests.support.faultfs_fixture import FaultMount
from tests.support.processes import Daemon, Fleet, fleet, free_port
from tests.test_restore_domain import MiB, write_image
from tests.test_restore_e2e import finished

pytestmark = pytest.mark.e2e

KiB = 1024
SUCCEEDED = resources_pb2.OPERATION_STATE_SUCCEEDED
FAILED = resources_pb2.OPERATION_STATE_FAILED
REVISION_TMP = re.compile(r"/\.\d{8}T\d{6}Z-[0-9a-f]{4}\.tmp\b")


def write_config(tmp: Path, port: int, base_dir: Path, source: Path) -> Path:
    path = tmp / "lifeboat.yaml"
    path.write_text(
        f"""
global: {{base-dir: {base_dir}, worker-limit: 1}}
hosts:
  backup01: {{backupd: 127.0.0.1:{port}, restored: 127.0.0.1:{free_port()}}}
schedules:
  default:
    hourly: {{interval: 1h, keep: 24}}
jobs:
  vm-a:
    schedule: default
    source: {{type: file, path: {source}}}
"""
    )
    return path


@dataclass
class Backupd:
    """A running backupd and the calls a test makes to it."""

    daemon: Daemon
    backups: backup_pb2_grpc.BackupServiceStub
    operations: operations_pb2_grpc.OperationServiceStub

    def back_up(self) -> resources_pb2.Operation:
        request = backup_pb2.StartBackupRequest(job="vm-a", tags=["hourly"])
        started = self.backups.StartBackup(request, timeout=30).operation
        return finished(self.operations, started.name)

    def revisions(self) -> list[resources_pb2.Revision]:
        request = backup_pb2.ListRevisionsRequest(job="vm-a")
        return list(self.backups.ListRevisions(request, timeout=10).revisions)

    def verify(self, revision_id: str) -> resources_pb2.Operation:
        request = backup_pb2.VerifyRevisionRequest(job="vm-a", revision_id=revision_id)
        started = self.backups.VerifyRevision(request, timeout=30).operation
        return finished(self.operations, started.name)


@contextlib.contextmanager
def backupd(running: Fleet, config: Path, port: int) -> Iterator[Backupd]:
    """backupd of `config`, stopped at the end."""
    daemon = running.start("backupd.cli", f"127.0.0.1:{port}", "--config", str(config))
    try:
        with client.channel(daemon.address, None) as channel:
            yield Backupd(
                daemon,
                backup_pb2_grpc.BackupServiceStub(channel),
                operations_pb2_grpc.OperationServiceStub(channel),
            )
    finally:
        assert daemon.terminate() == 0, daemon.log()


def files_of(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_source_read_error_fails_the_backup_naming_the_offset(
    tmp_path: Path, faultfs: FaultMount
) -> None:
    bad = 3 * MiB
    content = write_image(faultfs.below / "vm-a.raw", 8 * MiB, [(0, 8 * MiB)])
    source = faultfs.path / "vm-a.raw"
    repo = tmp_path / "repo"
    port = free_port()
    config = write_config(tmp_path, port, repo, source)
    faultfs.set_faults(f"fail-read vm-a.raw:{bad}:{64 * KiB}")
    with fleet(tmp_path) as running, backupd(running, config, port) as daemon:
        failed = daemon.back_up()
        assert failed.state == FAILED
        assert f"{source}: cannot read source: Input/output error at offset {bad}" in failed.error
        assert daemon.revisions() == []
        assert files_of(repo / "vm-a") == [".lock", "job.yaml", "log"]
        assert f"backup failed: {failed.error}" in (repo / "vm-a" / "log").read_text()

        faultfs.set_faults()
        done = daemon.back_up()
        assert done.state == SUCCEEDED, done.error
        (revision,) = daemon.revisions()
        assert revision.id == done.revision_id
        # The failed backup committed nothing, so there is no parent: the next one is full.
        assert revision.stats.full and not revision.parent_id
        assert (repo / "vm-a" / revision.id).read_bytes() == content


def test_repository_write_error_fails_the_backup_and_keeps_older_revisions(
    tmp_path: Path, faultfs: FaultMount
) -> None:
    source = tmp_path / "vm-a.raw"
    first_content = write_image(source, 6 * MiB, [(0, 6 * MiB)], seed=1)
    repo = faultfs.path / "repo"
    job_dir = faultfs.below / "repo" / "vm-a"
    port = free_port()
    config = write_config(tmp_path, port, repo, source)
    with fleet(tmp_path) as running:
        with backupd(running, config, port) as daemon:
            first = daemon.back_up()
            assert first.state == SUCCEEDED, first.error
            committed = files_of(job_dir)

            # Writing the new image's clone of the first revision fails.
            write_image(source, 6 * MiB, [(0, 64 * KiB)], seed=2)
            faultfs.set_faults(f"fail-write repo/vm-a/.*.tmp:{MiB}")
            in_clone = daemon.back_up()
            assert "has no reflinks; revisions are full copies" in daemon.daemon.log()
            # The source grew: the clone is written whole, the new blocks fail.
            grown_content = write_image(
                source, 8 * MiB, [(0, 64 * KiB), (6 * MiB, 2 * MiB)], seed=2
            )
            faultfs.set_faults(f"fail-write repo/vm-a/.*.tmp:{7 * MiB}")
            in_new_blocks = daemon.back_up()

            for failed, offset in ((in_clone, MiB), (in_new_blocks, 7 * MiB)):
                assert failed.state == FAILED
                assert f"Input/output error at offset {offset}: {repo}/vm-a/." in failed.error
                assert REVISION_TMP.search(failed.error), failed.error
                assert f"backup failed: {failed.error}" in (job_dir / "log").read_text()
            assert [r.id for r in daemon.revisions()] == [first.revision_id]
            assert files_of(job_dir) == committed

            faultfs.set_faults()
            verified = daemon.verify(first.revision_id)
            assert verified.state == SUCCEEDED, verified.error
            assert (job_dir / first.revision_id).read_bytes() == first_content
        # Start-up recovery finds nothing to remove.
        with backupd(running, config, port) as daemon:
            assert files_of(job_dir) == committed
            assert "recovery removed" not in (job_dir / "log").read_text()
            done = daemon.back_up()
            assert done.state == SUCCEEDED, done.error
            (_, revision) = daemon.revisions()
            # The failed backups committed nothing: the first revision is the parent.
            assert revision.parent_id == first.revision_id and not revision.stats.full
            assert (job_dir / revision.id).read_bytes() == grown_content


def test_faultfs_passes_through_and_fails_exactly_where_told(faultfs: FaultMount) -> None:
    content = write_image(faultfs.below / "disk.raw", MiB, [(0, MiB)])
    image = faultfs.path / "disk.raw"
    assert image.read_bytes() == content
    faultfs.set_faults(f"fail-read disk.raw:{256 * KiB}:{4 * KiB}", f"fail-write *.new:{8 * KiB}")
    assert faultfs.faults() == (
        f"fail-read disk.raw:{256 * KiB}:{4 * KiB}\nfail-write *.new:{8 * KiB}\n"
    )
    fd = os.open(image, os.O_RDONLY)
    try:
        # A read that reaches the fault returns the bytes before it; the next one fails.
        assert os.pread(fd, MiB, 0) == content[: 256 * KiB]
        with pytest.raises(OSError) as failed:
            os.pread(fd, MiB, 256 * KiB)
        assert failed.value.errno == errno.EIO
        assert os.pread(fd, KiB, 260 * KiB) == content[260 * KiB : 261 * KiB]
    finally:
        os.close(fd)
    fd = os.open(faultfs.path / "copy.new", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        assert os.pwrite(fd, content[: 64 * KiB], 0) == 8 * KiB
        with pytest.raises(OSError) as failed:
            os.pwrite(fd, content[: 64 * KiB], 8 * KiB)
        assert failed.value.errno == errno.EIO
        faultfs.set_faults()
        assert faultfs.faults() == ""
        assert os.pwrite(fd, content[8 * KiB : 64 * KiB], 8 * KiB) == 56 * KiB
    finally:
        os.close(fd)
    assert (faultfs.below / "copy.new").read_bytes() == content[: 64 * KiB]
    assert image.read_bytes() == content
    with pytest.raises(OSError) as refused:
        (faultfs.path / CONTROL).write_text("fail-read no-offset\n")
    assert refused.value.errno == errno.EINVAL
