"""Damage is local, and `last` has one meaning.

A revision whose `.rev`, `.sums` or image cannot be read or do not agree is listed as
damaged, with a one-line reason naming the file, and everything else keeps working: the
job's status, the host's statuses and estimates, the next backup, restores of the other
revisions. `last` is the newest good revision for every reader and for the `last`
symlinks. Real files, the real backup and restore workers, real gRPC.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from lifeboat.errors import FailedPrecondition, NotFound
from lifeboat.model import Job
from lifeboat.operations import OperationRecord, OperationRegistry, OperationState
from lifeboat.repository import (
    DamagedRevision,
    JobDirectory,
    Repository,
    RevisionDamaged,
    RevisionMeta,
)
from lifeboat.revision import Trust, VerificationState
from lifeboat.v1 import backup_pb2, backup_pb2_grpc, resources_pb2, restore_pb2, restore_pb2_grpc
from restored.worker import RestoreRequest, RestoreSettings, RestoreWorker, RevisionChoice
from tests.support.harness import Harness
from tests.support.images import flip_byte
from tests.test_backupd_worker import job_for, source_file
from tests.test_monitor_service import Fleet, shared_fake_clock

MiB = 1024 * 1024
OTHER_ID = "20200101T000000Z-0000"


def _replace_line(pattern: str, replacement: str) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        text, count = re.subn(pattern, replacement, path.read_text(), count=1, flags=re.M)
        assert count == 1
        path.write_text(text)

    return damage


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 7)


def _unknown_version(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"lifeboat-sums 1 ")
    path.write_bytes(b"lifeboat-sums 9 " + data[len(b"lifeboat-sums 1 ") :])


@dataclass(frozen=True)
class Damage:
    suffix: str  # of the file damaged: ".rev", ".sums" or "" (the image)
    apply: Callable[[Path], None]
    words: str  # in the reason


DAMAGE = {
    "bad-yaml": Damage(".rev", lambda path: path.write_text("id: [\n  - x\n"), "not YAML"),
    "size-big": Damage(".rev", _replace_line(r"^size: \d+$", "size: big"), "'size' must be int"),
    "another-id": Damage(
        ".rev", _replace_line(r"^id: \S+$", f"id: {OTHER_ID}"), "metadata is of revision"
    ),
    "empty-rev": Damage(".rev", lambda path: path.write_bytes(b""), "empty"),
    "binary-rev": Damage(".rev", lambda path: path.write_bytes(b"\xff\xfe\x00id"), "not UTF-8"),
    "unknown-version-rev": Damage(
        ".rev", _replace_line(r"^version: 1$", "version: 2"), "version 2 is not supported"
    ),
    "truncated-sums": Damage(".sums", _truncate, "bytes of digests"),
    "unknown-version-sums": Damage(".sums", _unknown_version, "manifest version b'9'"),
    "image-gone": Damage("", os.unlink, "No such file"),
}


class Host:
    """backupd's and restored's workers on one repository, as on one backup host."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.repo = tmp_path / "repo"
        self.targets = tmp_path / "restore"
        self.targets.mkdir()
        self.backupd = Harness(self.repo)
        self.registry = OperationRegistry("backup01")
        self.registry.bind_loop(asyncio.get_running_loop())
        settings = RestoreSettings(
            "backup01", self.repo, 4, (str(self.targets),), 4, dt.timedelta(seconds=60)
        )
        self.restored = RestoreWorker(settings, self.registry)
        self.sources = {name: source_file(tmp_path / f"{name}.raw") for name in ("vm-a", "vm-b")}

    def job(self, name: str = "vm-a") -> Job:
        return job_for(self.sources[name], name)

    def job_dir(self, name: str = "vm-a") -> JobDirectory:
        return Repository(self.repo).job(name)

    async def back_up(self, name: str = "vm-a") -> RevisionMeta:
        record = await self.backupd.backup(self.job(name))
        assert record.state == OperationState.SUCCEEDED, record.error
        return self.backupd.worker.get_revision(name, record.revision_id)

    def file(self, revision_id: str, damage: Damage, name: str = "vm-a") -> Path:
        return self.repo / name / f"{revision_id}{damage.suffix}"

    async def restore(self, choice: RevisionChoice, target: str = "vm.raw") -> OperationRecord:
        request = RestoreRequest("vm-a", str(self.targets / target), choice)
        record = await asyncio.to_thread(self.restored.start_restore, request)
        async for _ in self.registry.watch(record.name):
            pass
        while not record.state.finished:  # the watch may end on the update before the last
            await asyncio.sleep(0.01)
        return record

    def damage_lines(self, revision_id: str, name: str = "vm-a") -> list[str]:
        log = (self.repo / name / "log").read_text().splitlines()
        return [line for line in log if f"revision {revision_id} damaged:" in line]

    def last_link(self, name: str = "vm-a") -> str | None:
        try:
            return os.readlink(self.repo / name / "last")
        except FileNotFoundError:
            return None


@pytest.fixture
async def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


@pytest.mark.parametrize("kind", DAMAGE)
async def test_damage_in_an_old_revision_stays_local(host: Host, kind: str) -> None:
    damage = DAMAGE[kind]
    old, middle, newest = [await host.back_up() for _ in range(3)]
    await host.back_up("vm-b")
    damaged_file = host.file(old.id, damage)
    damage.apply(damaged_file)
    worker = host.backupd.worker

    # Listed as damaged, with a one-line reason naming the file; the others intact.
    entries = worker.list_revisions("vm-a")
    assert [entry.id for entry in entries] == [old.id, middle.id, newest.id]
    listed = entries[0]
    assert isinstance(listed, DamagedRevision)
    assert str(damaged_file) in listed.reason and damage.words in listed.reason
    assert "\n" not in listed.reason
    assert entries[1:] == [middle, newest]
    assert isinstance(worker.get_entry("vm-a", old.id), DamagedRevision)
    with pytest.raises(FailedPrecondition, match=re.escape(str(damaged_file))):
        worker.get_revision("vm-a", old.id)

    # The job's status and the host's answer.
    status = worker.job_status("vm-a")
    assert [d.id for d in status.damaged] == [old.id]
    assert status.last_good_revision == newest and status.last_revision == newest
    assert status.revision_count == 3
    assert sorted(s.job for s in worker.job_statuses()) == ["vm-a", "vm-b"]
    estimates = host.restored.estimates([])
    assert {e.job: e.revision_id for e in estimates.estimates}["vm-a"] == newest.id

    # The next backup is fine, and incremental from the newest good revision.
    following = await host.back_up()
    assert following.parent == newest.id and following.stats["full"] is False

    # Restoring it is refused, naming the file; "latest" is the newest good revision.
    with pytest.raises(FailedPrecondition, match=re.escape(str(damaged_file))):
        await host.restore(RevisionChoice(old.id))
    latest = await host.restore(RevisionChoice())
    assert latest.state == OperationState.SUCCEEDED, latest.error
    assert latest.revision_id == following.id
    assert (host.targets / "vm.raw").read_bytes() == host.sources["vm-a"].read_bytes()
    assert host.last_link() == following.id

    # Read many times over, by both workers: one line in the job's log.
    assert len(host.damage_lines(old.id)) == 1
    assert host.damage_lines(old.id)[0].endswith(f"revision {old.id} damaged: {listed.reason}")


@pytest.mark.parametrize("kind", ["truncated-sums", "unknown-version-sums", "image-gone"])
async def test_restoring_a_revision_with_damaged_data_files_distrusts_it(
    host: Host, kind: str
) -> None:
    damage = DAMAGE[kind]
    old, newest = await host.back_up(), await host.back_up()
    damage.apply(host.file(old.id, damage))
    with pytest.raises(FailedPrecondition, match="revision distrusted"):
        await host.restore(RevisionChoice(old.id))
    meta = host.job_dir().metadata(old.id)
    assert (meta.trust, meta.verification.state) == (Trust.DISTRUSTED, VerificationState.FAILED)
    assert str(host.file(old.id, damage)) in meta.verification.problem
    assert host.job_dir().metadata(newest.id).trust == Trust.TRUSTED
    log = (host.repo / "vm-a" / "log").read_text()
    assert f"revision {old.id} distrusted after a failed restore" in log


async def test_damaged_newest_revision(host: Host) -> None:
    """`last` and the parent move to the newest revision that is intact; backupd repairs
    the stale `last` symlink when it reads, restored only resolves `last` itself."""
    older, newest = await host.back_up(), await host.back_up()
    DAMAGE["size-big"].apply(host.file(newest.id, DAMAGE["size-big"]))
    assert host.last_link() == newest.id  # stale: nothing has read the job since

    choice = host.restored.choose_revision(host.job_dir(), RevisionChoice())
    assert choice.id == older.id
    assert host.last_link() == newest.id, "restored never writes the symlinks"

    assert host.backupd.worker.get_revision("vm-a", "last").id == older.id
    host.backupd.worker.job_status("vm-a")
    assert host.last_link() == older.id
    assert os.readlink(host.repo / "vm-a" / "last.rev") == f"{older.id}.rev"

    following = await host.back_up()
    assert following.parent == older.id
    assert host.last_link() == following.id


async def test_verify_of_an_unknown_manifest_version_distrusts(host: Host) -> None:
    older, newest = await host.back_up(), await host.back_up()
    sums = host.file(newest.id, DAMAGE["unknown-version-sums"])
    _unknown_version(sums)
    worker = host.backupd.worker
    record = await host.backupd.finish(await worker.start_verify("vm-a", newest.id))
    assert record.state == OperationState.FAILED
    assert str(sums) in record.error and "version" in record.error
    meta = host.job_dir().metadata(newest.id)
    assert (meta.trust, meta.verification.state) == (Trust.DISTRUSTED, VerificationState.FAILED)
    assert "version" in meta.verification.problem
    assert host.last_link() == older.id
    assert worker.job_status("vm-a").last_good_revision == older


async def test_verify_of_a_damaged_rev_is_refused(host: Host) -> None:
    meta = await host.back_up()
    DAMAGE["empty-rev"].apply(host.file(meta.id, DAMAGE["empty-rev"]))
    with pytest.raises(RevisionDamaged, match="empty"):
        await host.backupd.worker.start_verify("vm-a", meta.id)
    with pytest.raises(NotFound, match="no good revision"):
        await host.backupd.worker.start_verify("vm-a", "")


async def test_a_damaged_revision_can_be_deleted(host: Host) -> None:
    older, newest = await host.back_up(), await host.back_up()
    DAMAGE["bad-yaml"].apply(host.file(newest.id, DAMAGE["bad-yaml"]))
    await host.backupd.worker.delete_revision("vm-a", newest.id, newest.id)
    assert [e.id for e in host.backupd.worker.list_revisions("vm-a")] == [older.id]
    assert sorted(os.listdir(host.repo / "vm-a")) == sorted(
        [".lock", "job.yaml", "log", "last", "last.rev", older.id, f"{older.id}.rev",
         f"{older.id}.sums"]
    )  # fmt: skip
    assert host.last_link() == older.id


async def test_damage_is_reported_again_once_the_file_changes(host: Host) -> None:
    meta = await host.back_up()
    await host.back_up()
    rev = host.file(meta.id, DAMAGE["empty-rev"])
    rev.write_bytes(b"")
    host.backupd.worker.list_revisions("vm-a")
    host.backupd.worker.list_revisions("vm-a")
    rev.write_text("id: [\n")
    host.backupd.worker.list_revisions("vm-a")
    host.backupd.worker.list_revisions("vm-a")
    lines = host.damage_lines(meta.id)
    assert len(lines) == 2
    assert "empty" in lines[0] and "not YAML" in lines[1]


async def test_last_follows_distrust_by_a_restore(host: Host) -> None:
    older, newest = await host.back_up(), await host.back_up()
    flip_byte(host.repo / "vm-a" / newest.id, 100)
    failed = await host.restore(RevisionChoice(newest.id))
    assert failed.state == OperationState.FAILED and "distrusted" in failed.error
    assert host.last_link() == older.id
    assert host.backupd.worker.get_revision("vm-a", "last") == older


# --- through the real daemons' gRPC ------------------------------------------------------


async def test_damage_over_grpc_is_a_warning_of_one_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = Fleet(tmp_path, shared_fake_clock(monkeypatch))
    try:
        for host in ("backup01", "backup02"):
            await fleet.start_backupd(host)
            await fleet.start_restored(host)
        await fleet.start_scheduler()
        await fleet.start_monitor()
        await check_damage_over_grpc(fleet)
    finally:
        await fleet.stop_all()


async def check_damage_over_grpc(fleet: Fleet) -> None:
    old = await fleet.backup("vm-web01")
    newest = await fleet.backup("vm-web01")
    await fleet.backup("vm-db01")
    await fleet.backup("vm-mail")
    rev = fleet.image("vm-web01", old.revision_id).with_suffix(".rev")
    _replace_line(r"^size: \d+$", "size: big")(rev)
    backup = backup_pb2_grpc.BackupServiceStub(fleet.channel("backup01.backupd"))
    restore = restore_pb2_grpc.RestoreServiceStub(fleet.channel("backup01.restored"))

    listed = await backup.ListRevisions(backup_pb2.ListRevisionsRequest(job="vm-web01"))
    assert [r.id for r in listed.revisions] == [old.revision_id, newest.revision_id]
    damaged, intact = listed.revisions
    assert str(rev) in damaged.damage and "'size' must be int" in damaged.damage
    assert not intact.damage and intact.trust == resources_pb2.TRUST_TRUSTED
    statuses = await backup.ListJobStatuses(backup_pb2.ListJobStatusesRequest())
    by_job = {s.job: s for s in statuses.statuses}
    assert sorted(by_job) == ["vm-db01", "vm-web01"]
    web = by_job["vm-web01"]
    assert [r.id for r in web.damaged_revisions] == [old.revision_id]
    assert web.last_good_revision.id == newest.revision_id
    last = await backup.GetRevision(
        backup_pb2.GetRevisionRequest(job="vm-web01", revision_id="last")
    )
    assert last.revision.id == newest.revision_id

    # Restores: the damaged one is refused naming the file; "last" streams the newest.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await restore.StartRestore(
            restore_pb2.StartRestoreRequest(
                job="vm-web01", revision_id=old.revision_id, target="/nowhere/vm.raw"
            )
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert str(rev) in (refused.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in restore.ReadRevision(
            restore_pb2.ReadRevisionRequest(job="vm-web01", revision_id=old.revision_id)
        ):
            pass
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert str(rev) in (refused.value.details() or "")
    data = bytearray()
    async for piece in restore.ReadRevision(
        restore_pb2.ReadRevisionRequest(job="vm-web01", revision_id="last")
    ):
        data[piece.offset : piece.offset + len(piece.data)] = piece.data
    assert bytes(data) == (fleet.tmp_path / "vm-web01.raw").read_bytes()

    # The monitor: a WARNING for that job only; the host's other job is fine.
    await fleet.poll()
    answer = await fleet.check(job="vm-web01")
    assert (answer.state, answer.exit_code) == (resources_pb2.SLA_STATE_WARNING, 1)
    assert f"revision {old.revision_id} damaged: {rev}: revision metadata" in answer.summary
    assert (await fleet.check(job="vm-db01")).state == resources_pb2.SLA_STATE_OK

    # The next backup of the job is fine, from the newest good revision.
    following = await fleet.backup("vm-web01")
    written = await backup.GetRevision(
        backup_pb2.GetRevisionRequest(job="vm-web01", revision_id=following.revision_id)
    )
    assert written.revision.parent_id == newest.revision_id
