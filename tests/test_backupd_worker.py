"""The backup worker's promises: freeze hooks, verification, retention, full disks,
vanishing sources and kill -9 never leave a half revision or harm an older one."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifeboat import clock
from lifeboat.model import FileSource, FreezeHook, Job, Schedule, TagSpec
from lifeboat.operations import OperationState
from lifeboat.repository import Repository
from lifeboat.revision import Trust, VerificationState
from tests.support.harness import Harness
from tests.support.images import flip_byte
from tests.support.loopfs import loop_mount
from tests.support.needs import need_root
from tests.support.processes import fleet, free_port, grpcurl

MiB = 1024 * 1024
HOURLY = Schedule("default", (TagSpec("hourly", dt.timedelta(hours=1), 2),))


def source_file(path: Path, size: int = 4 * MiB) -> Path:
    with path.open("wb") as image:
        for _ in range(0, size, MiB):
            image.write(os.urandom(MiB))
        image.truncate(size)
    return path


def job_for(
    source: Path, name: str = "vm-a", freeze: str = "", timeout: float = 10, thaw: str = ""
) -> Job:
    hook = FreezeHook(freeze, dt.timedelta(seconds=timeout), thaw) if freeze else None
    return Job(name, "backup01", HOURLY, FileSource(str(source)), hook)


@pytest.mark.parametrize(
    ("command", "state", "message"),
    [
        pytest.param('test "$LIFEBOAT_JOB" = vm-a', OperationState.SUCCEEDED, "", id="ok-sees-job"),
        pytest.param(
            "echo database busy >&2; exit 75",
            OperationState.RETRY_LATER,
            "database busy",
            id="retry-later",
        ),
        pytest.param(
            "echo cannot freeze >&2; exit 3",
            OperationState.FAILED,
            "exit status 3: cannot freeze",
            id="fails",
        ),
        pytest.param("sleep 5", OperationState.FAILED, "timed out", id="timeout"),
    ],
)
async def test_freeze_hook_outcomes(
    tmp_path: Path, command: str, state: OperationState, message: str
) -> None:
    harness = Harness(tmp_path / "repo")
    job = job_for(source_file(tmp_path / "vm.raw"), freeze=command, timeout=0.5)
    record = await harness.backup(job)
    assert record.state == state, record.error
    assert message in record.error
    revisions = harness.worker.list_revisions("vm-a")
    assert len(revisions) == (1 if state == OperationState.SUCCEEDED else 0)
    if message:
        assert message in (tmp_path / "repo" / "vm-a" / "log").read_text()
        assert harness.worker.job_status("vm-a").last_error == record.error


@pytest.mark.parametrize(
    ("thaw", "source_present", "state", "message"),
    [
        pytest.param(
            "echo $LIFEBOAT_PHASE >> {log}", True, OperationState.SUCCEEDED, "", id="thawed"
        ),
        pytest.param(
            "echo thaw >> {log}",
            False,
            OperationState.FAILED,
            "cannot open source",
            id="thawed-after-failure",
        ),
        pytest.param(
            "echo thaw >> {log}; exit 4",
            True,
            OperationState.FAILED,
            "thaw-command failed with exit status 4",
            id="thaw-fails",
        ),
    ],
)
async def test_thaw_runs_once_after_freeze(
    tmp_path: Path, thaw: str, source_present: bool, state: OperationState, message: str
) -> None:
    hook_log = tmp_path / "hooks.log"
    source = source_file(tmp_path / "vm.raw")
    if not source_present:
        source.unlink()
    harness = Harness(tmp_path / "repo")
    job = job_for(source, freeze=f"echo freeze >> {hook_log}", thaw=thaw.format(log=hook_log))
    record = await harness.backup(job)
    assert record.state == state, record.error
    assert message in record.error
    lines = hook_log.read_text().split()
    assert lines[0] == "freeze" and lines.count("thaw") == 1
    if "exit 4" in thaw:
        assert f"revision {record.revision_id} was written" in record.error
        assert len(harness.worker.list_revisions("vm-a")) == 1


async def test_verification_mismatch_distrusts_and_forces_full(tmp_path: Path) -> None:
    """Bit rot in the parent's stored copy of an unchanged block reaches the new revision
    through the clone; the sampled comparison with the source must catch it."""
    source = source_file(tmp_path / "vm.raw", 8 * MiB)
    harness = Harness(tmp_path / "repo", verify_fraction=1.0)
    first = await harness.backup(job_for(source))
    assert first.state == OperationState.SUCCEEDED
    flip_byte(tmp_path / "repo" / "vm-a" / first.revision_id, 5 * MiB + 7)

    record = await harness.backup(job_for(source))
    assert record.state == OperationState.FAILED
    assert "verification" in record.error and "distrusted" in record.error
    bad = harness.worker.get_revision("vm-a", record.revision_id)
    assert bad.trust is Trust.DISTRUSTED
    assert bad.verification.state is VerificationState.FAILED
    assert bad.verification.mismatched_offsets == (5 * MiB,)
    assert bad.verification.checked_runs == ((0, 8 * MiB // 16384),)
    # `last` is the newest good revision: never the distrusted one, on disk or asked for.
    assert harness.worker.get_revision("vm-a", "last").id == first.revision_id
    assert os.readlink(tmp_path / "repo" / "vm-a" / "last") == first.revision_id
    status = harness.worker.job_status("vm-a")
    assert (
        status.last_good_revision is not None and status.last_good_revision.id == first.revision_id
    )

    following = await harness.backup(job_for(source))
    assert following.state == OperationState.SUCCEEDED, following.error
    meta = harness.worker.get_revision("vm-a", following.revision_id)
    assert meta.stats["full"] is True and meta.parent is None
    assert (tmp_path / "repo" / "vm-a" / "last").read_bytes() == source.read_bytes()


async def test_no_sample_is_recorded_as_skipped(tmp_path: Path) -> None:
    source = source_file(tmp_path / "vm.raw", 8 * MiB)
    harness = Harness(tmp_path / "repo", verify_fraction=0.0)
    record = await harness.backup(job_for(source))
    assert record.state == OperationState.SUCCEEDED, record.error
    verification = harness.worker.get_revision("vm-a", record.revision_id).verification
    assert verification.state is VerificationState.SKIPPED
    assert verification.blocks_checked == 0 and verification.checked_runs == ()


async def test_retention_expires_tags_and_deletes_untagged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
    times = iter(start + dt.timedelta(minutes=61 * i) for i in range(1000))
    current = {"now": start}

    def fake_now() -> dt.datetime:
        return current["now"]

    monkeypatch.setattr(clock, "now", fake_now)
    source = source_file(tmp_path / "vm.raw", MiB)
    harness = Harness(tmp_path / "repo")
    ids = []
    for _ in range(5):
        current["now"] = next(times)
        record = await harness.backup(job_for(source), tags=("hourly",))
        assert record.state == OperationState.SUCCEEDED, record.error
        ids.append(record.revision_id)
    kept = [r.id for r in harness.worker.list_revisions("vm-a")]
    assert kept == ids[-2:], "keep=2 hourly: older revisions past 2h lose the tag and go"
    log = (tmp_path / "repo" / "vm-a" / "log").read_text()
    assert f"retention deleted revision {ids[0]}" in log
    for revision_id in ids[-2:]:
        assert (tmp_path / "repo" / "vm-a" / revision_id).read_bytes() == source.read_bytes()

    await harness.worker.update_tags("vm-a", ids[-2], ["manual:keep"], [])
    for _ in range(3):
        current["now"] = next(times)
        assert (await harness.backup(job_for(source))).state == OperationState.SUCCEEDED
    remaining = harness.worker.list_revisions("vm-a")
    assert ids[-2] in [r.id for r in remaining]
    assert harness.worker.get_revision("vm-a", ids[-2]).tags == ["manual:keep"]


async def test_full_disk_fails_cleanly_and_keeps_older_revisions(tmp_path: Path) -> None:
    need_root()
    with loop_mount("tmpfs", 14 * MiB, tmp_path) as small:
        source = source_file(tmp_path / "vm.raw", 12 * MiB)
        with source.open("r+b") as image:
            image.write(bytes(8 * MiB))  # mostly zeros: the first revision (4 MiB) fits
        harness = Harness(small / "repo")
        first = await harness.backup(job_for(source))
        assert first.state == OperationState.SUCCEEDED, first.error
        before = (small / "repo" / "vm-a" / first.revision_id).read_bytes()

        source_file(source, 12 * MiB)  # now all data: 12 MiB more no longer fit
        record = await harness.backup(job_for(source))
        assert record.state == OperationState.FAILED
        assert "full" in record.error, record.error
        names = sorted(p.name for p in (small / "repo" / "vm-a").iterdir())
        assert not [n for n in names if n.endswith(".tmp")], names
        assert [r.id for r in harness.worker.list_revisions("vm-a")] == [first.revision_id]
        assert (small / "repo" / "vm-a" / first.revision_id).read_bytes() == before
        assert (small / "repo" / "vm-a" / "last").resolve().name == first.revision_id


async def test_source_that_shrinks_mid_backup_fails_cleanly(tmp_path: Path) -> None:
    source = source_file(tmp_path / "vm.raw", 256 * MiB)
    harness = Harness(tmp_path / "repo")
    record = await harness.start(job_for(source))
    async for update in harness.registry.watch(record.name, heartbeat=0.01):
        if update.bytes_done > 0 or update.state.finished:
            break
    os.truncate(source, MiB)
    final = await harness.finish(record)
    assert final.state == OperationState.FAILED
    assert "shrank" in final.error or "size changed" in final.error, final.error
    assert harness.worker.list_revisions("vm-a") == []
    assert not [p for p in (tmp_path / "repo" / "vm-a").iterdir() if p.name.endswith(".tmp")]


def partial_images(directory: Path) -> list[Path]:
    """Temporary images of a backup in progress that already hold data."""
    found = []
    for path in directory.glob(".2*.tmp"):
        if path.name.endswith((".sums.tmp", ".rev.tmp")):
            continue
        try:
            if path.stat().st_blocks > 0:
                found.append(path)
        except FileNotFoundError:  # renamed while we looked
            continue
    return found


@pytest.mark.e2e
def test_kill_9_mid_backup_leaves_no_partial_revision(tmp_path: Path) -> None:
    source = source_file(tmp_path / "vm.raw", 8 * MiB)
    config = tmp_path / "lifeboat.yaml"
    port = free_port()
    config.write_text(
        f"global: {{base-dir: {tmp_path}/repo, worker-limit: 2}}\n"
        f"hosts: {{backup01: {{backupd: 127.0.0.1:{port}, restored: 127.0.0.1:{free_port()}}}}}\n"
        "schedules: {default: {hourly: {interval: 1h, keep: 24}}}\n"
        f"jobs: {{vm-a: {{schedule: default, source: {{type: file, path: {source}}}}}}}\n"
    )
    job_dir = Repository(tmp_path / "repo").job("vm-a")
    request = {"job": "vm-a", "tags": ["hourly"]}
    args = ("--config", str(config), "--host", "backup01")
    with fleet(tmp_path) as running:
        daemon = running.start("backupd.cli", f"127.0.0.1:{port}", *args)
        call = grpcurl(
            "-plaintext",
            "-d",
            json.dumps(request),
            daemon.address,
            "lifeboat.v1.BackupService/StartBackup",
        )
        assert call.returncode == 0, call.stderr
        deadline = time.monotonic() + 30
        while not job_dir.revisions() and time.monotonic() < deadline:
            time.sleep(0.05)
        first = job_dir.revisions()
        assert len(first) == 1
        original = job_dir.image_path(first[0].id).read_bytes()

        source_file(source, 256 * MiB)  # big enough to be caught in the middle
        call = grpcurl(
            "-plaintext",
            "-d",
            json.dumps(request),
            daemon.address,
            "lifeboat.v1.BackupService/StartBackup",
        )
        assert call.returncode == 0, call.stderr
        while not partial_images(job_dir.path):
            time.sleep(0.002)
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait()
        killed_listing = sorted(p.name for p in job_dir.path.iterdir())
        assert [r.id for r in job_dir.revisions()] == [first[0].id], "no half revision is visible"
        assert job_dir.image_path(first[0].id).read_bytes() == original

        restarted = running.start("backupd.cli", f"127.0.0.1:{port}", *args)
        assert not [p for p in job_dir.path.iterdir() if p.name.endswith(".tmp")]
        assert "recovery removed" in (job_dir.path / "log").read_text(), killed_listing
        call = grpcurl(
            "-plaintext",
            "-d",
            json.dumps(request),
            restarted.address,
            "lifeboat.v1.BackupService/StartBackup",
        )
        assert call.returncode == 0, call.stderr
        deadline = time.monotonic() + 60
        while len(job_dir.revisions()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(job_dir.revisions()) == 2
        assert (job_dir.path / "last").read_bytes() == source.read_bytes()


def test_check_tags() -> None:
    # The one validation shared by StartBackup and UpdateRevisionTags.
    from backupd.worker import check_tags
    from lifeboat.errors import InvalidArgument

    daily = Schedule("default", (*HOURLY.tags, TagSpec("daily", dt.timedelta(days=1), 7)))
    assert check_tags(["daily", "hourly", "daily", "manual:before-upgrade"], daily) == [
        "daily",
        "hourly",
        "manual:before-upgrade",
    ]
    assert check_tags(["manual:x"], None) == ["manual:x"]
    too_many = [f"manual:{i}" for i in range(33)]
    for bad in ([], ["../x"], ["a b"], ["manual:"], ["weekly"], too_many, ["manual:" + "x" * 58]):
        with pytest.raises(InvalidArgument):
            check_tags(bad, daily)
    with pytest.raises(InvalidArgument, match="only manual:NAME"):
        check_tags(["hourly"], None)


def modes(directory: Path) -> dict[str, int]:
    """The permission bits of `directory` and of everything in it but symlinks."""
    found = {".": stat.S_IMODE(os.stat(directory).st_mode)}
    for entry in os.scandir(directory):
        if not entry.is_symlink():
            found[entry.name] = stat.S_IMODE(entry.stat().st_mode)
    return found


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask_022")
async def test_the_repository_is_private_to_its_owner(tmp_path: Path) -> None:
    repo = tmp_path / "srv" / "repo"
    harness = Harness(repo)
    source = source_file(tmp_path / "vm.raw")
    os.chmod(source, 0o644)
    harness.worker.recover_all()  # creates base-dir, as at start-up
    for _ in range(2):  # a full revision, then one cloned from it
        record = await harness.backup(job_for(source))
        assert record.state == OperationState.SUCCEEDED, record.error
    job_modes = modes(repo / "vm-a")
    assert {"log", "job.yaml", ".lock"} <= set(job_modes)
    assert [sum(n.endswith(suffix) for n in job_modes) for suffix in (".rev", ".sums")] == [2, 2]
    assert job_modes == {name: 0o700 if name == "." else 0o600 for name in job_modes}
    assert stat.S_IMODE(os.stat(repo).st_mode) == 0o700


async def test_recovery_makes_an_older_repository_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = tmp_path / "repo"
    harness = Harness(repo)
    record = await harness.backup(job_for(source_file(tmp_path / "vm.raw")))
    assert record.state == OperationState.SUCCEEDED, record.error
    throughput = repo / ".restore-throughput"
    throughput.write_text("samples: []\n")
    job_dir = repo / "vm-a"
    for path in [repo, job_dir]:
        os.chmod(path, 0o755)
    for name in modes(job_dir):
        os.chmod(job_dir / name, 0o755 if name == "." else 0o644)
    os.chmod(throughput, 0o644)
    count = len(modes(job_dir))

    with caplog.at_level("WARNING", logger="lifeboat.backupd"):
        harness.worker.recover_all()

    assert modes(job_dir) == {name: 0o700 if name == "." else 0o600 for name in modes(job_dir)}
    assert modes(repo)[".restore-throughput"] == 0o600
    assert modes(repo)["."] == 0o700
    assert os.path.islink(job_dir / "last")
    assert f"job vm-a: made {count} files and directories private" in caplog.text
    caplog.clear()
    harness.worker.recover_all()  # nothing left to fix: nothing logged
    assert "private" not in caplog.text


async def test_a_backup_says_in_the_jobs_log_what_it_recovered(tmp_path: Path) -> None:
    """Leftovers a backup's own recovery finds (no restart in between) are in the job's log,
    as start-up recovery's are."""
    harness = Harness(tmp_path / "repo")
    job = job_for(source_file(tmp_path / "vm.raw"))
    assert (await harness.backup(job)).state == OperationState.SUCCEEDED
    leftover = tmp_path / "repo" / "vm-a" / ".20260101T000000Z-0000.tmp"
    leftover.write_bytes(b"half a revision")

    record = await harness.backup(job)

    assert record.state == OperationState.SUCCEEDED, record.error
    assert not leftover.exists()
    log = (tmp_path / "repo" / "vm-a" / "log").read_text()
    assert f"recovery removed leftovers: {leftover.name}" in log
