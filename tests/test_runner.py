"""The one operation runner: how a failure becomes an operation's end, for backupd and
restored alike."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import os
from pathlib import Path

import pytest

from lifeboat.errors import Cancelled, DataLoss, FailedPrecondition, RetryLater
from lifeboat.model import FileSource, Job
from lifeboat.operations import OperationRecord, OperationRegistry, OperationState
from lifeboat.runner import Ending, ending_of
from restored.worker import RestoreRequest, RestoreSettings, RestoreWorker
from tests.support.harness import Harness
from tests.support.loopfs import loop_mount
from tests.support.needs import need_root
from tests.test_backupd_worker import HOURLY, MiB, source_file


@pytest.mark.parametrize(
    ("failure", "ending"),
    [
        pytest.param(
            RetryLater("hook busy"), Ending(OperationState.RETRY_LATER, "hook busy"), id="retry"
        ),
        pytest.param(
            Cancelled("stopped"), Ending(OperationState.CANCELLED, "stopped"), id="cancelled"
        ),
        pytest.param(
            FailedPrecondition("thaw failed"),
            Ending(OperationState.FAILED, "thaw failed"),
            id="lifeboat-error",
        ),
        pytest.param(DataLoss("bad block"), Ending(OperationState.FAILED, "bad block"), id="data"),
        pytest.param(
            FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "/repo/vm-a/x"),
            Ending(OperationState.FAILED, "No such file or directory: /repo/vm-a/x"),
            id="os-error-with-file",
        ),
        pytest.param(
            OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
            Ending(OperationState.FAILED, "No space left on device"),
            id="os-error",
        ),
        pytest.param(
            ValueError("boom"),
            Ending(OperationState.FAILED, "internal error: ValueError('boom')"),
            id="crash",
        ),
    ],
)
def test_how_a_failure_ends_an_operation(failure: BaseException, ending: Ending) -> None:
    assert ending_of(failure, "backup-vm-a-1") == ending


async def test_backup_and_restore_failing_with_os_errors_end_alike(tmp_path: Path) -> None:
    """Both workers end through the runner: an OSError becomes "<strerror>: <file>" and
    the failure is written to the job's log."""
    need_root()
    source = source_file(tmp_path / "vm.raw", 4 * MiB)
    job = Job("vm-a", "backup01", HOURLY, FileSource(str(source)))
    written = await Harness(tmp_path / "repo").backup(job)
    assert written.state == OperationState.SUCCEEDED, written.error
    with loop_mount("tmpfs", 6 * MiB, tmp_path / "small") as small:
        (small / "filler").write_bytes(bytes(3 * MiB))  # the 4 MiB revision no longer fits
        target = small / "restored.raw"
        restored = await _restore(tmp_path / "repo", job, str(target))

    broken = tmp_path / "broken"
    (broken / "vm-a" / "job.yaml").mkdir(parents=True)  # the job file cannot be replaced
    failed_backup = await Harness(broken).backup(job)

    for record, problem, path in (
        (restored, errno.ENOSPC, target),
        (failed_backup, errno.EISDIR, broken / "vm-a" / ".job.yaml.tmp"),
    ):
        assert record.state == OperationState.FAILED
        assert record.error.startswith(os.strerror(problem)), record.error
        assert record.error.endswith(f": {path}"), record.error
    restore_log = (tmp_path / "repo" / "vm-a" / "log").read_text()
    assert f"restore {restored.name} to {restored.target} failed: {restored.error}" in restore_log
    backup_log = (broken / "vm-a" / "log").read_text()
    assert f"backup failed: {failed_backup.error}" in backup_log


async def _restore(base_dir: Path, job: Job, target: str) -> OperationRecord:
    registry = OperationRegistry("backup01")
    registry.bind_loop(asyncio.get_running_loop())
    settings = RestoreSettings(
        host="backup01",
        base_dir=base_dir,
        restore_limit=1,
        restore_targets=(str(Path(target).parent),),
        stream_limit=1,
        stream_idle_timeout=dt.timedelta(minutes=1),
        jobs={job.name: job},
    )
    worker = RestoreWorker(settings, registry)
    try:
        record = await asyncio.to_thread(worker.start_restore, RestoreRequest(job.name, target))
        async for update in registry.watch(record.name):
            record = update
        return record
    finally:
        await asyncio.to_thread(worker.shutdown)
