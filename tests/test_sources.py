"""The one contract every source passes: file and real Ceph RBD, through the real worker.

Back up, change, back up again: the stored `last` is byte-identical to the
source (for RBD: to `rbd export` of the revision's snapshot), holes stay
holes, only changed blocks are written, resizes work, a missing source fails
cleanly with nothing visible.
"""

from __future__ import annotations

import abc
import asyncio
import datetime as dt
import errno
import itertools
import json
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from backupd.backup import BlockWriter
from lifeboat.model import CephRbdSource, FileSource, Job, Schedule, Source, TagSpec
from lifeboat.operations import OperationRecord, OperationState
from lifeboat.repository import RevisionMeta, RevisionWriter
from lifeboat.revision import Trust, VerificationState
from tests.support.ceph import CephCluster, rbd_modules_importable
from tests.support.harness import Harness
from tests.support.needs import need

MiB = 1024 * 1024
SIZE = 8 * MiB
SCHEDULE = Schedule("default", (TagSpec("hourly", dt.timedelta(hours=1), 24),))


class Backend(abc.ABC):
    """Creates and changes source images of one kind."""

    @abc.abstractmethod
    def create(self, name: str, size: int) -> Source: ...

    @abc.abstractmethod
    def write(self, name: str, offset: int, data: bytes) -> None: ...

    @abc.abstractmethod
    def resize(self, name: str, size: int) -> None: ...

    @abc.abstractmethod
    def remove(self, name: str) -> None: ...

    @abc.abstractmethod
    def content(self, name: str, revision_id: str) -> bytes:
        """The source as it was when `revision_id` was taken."""

    @abc.abstractmethod
    def kept_snapshots(self, name: str) -> list[str]:
        """Revision ids whose snapshot the source still keeps (none for files)."""


class FileBackend(Backend):
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.raw"

    def create(self, name: str, size: int) -> Source:
        with self.path(name).open("wb") as image:
            image.truncate(size)
        return FileSource(str(self.path(name)))

    def write(self, name: str, offset: int, data: bytes) -> None:
        with self.path(name).open("r+b") as image:
            image.seek(offset)
            image.write(data)

    def resize(self, name: str, size: int) -> None:
        os.truncate(self.path(name), size)

    def remove(self, name: str) -> None:
        self.path(name).unlink()

    def content(self, name: str, revision_id: str) -> bytes:
        return self.path(name).read_bytes()

    def kept_snapshots(self, name: str) -> list[str]:
        return []


class RbdBackend(Backend):
    def __init__(self, cluster: CephCluster, workdir: Path) -> None:
        self.cluster = cluster
        self.workdir = workdir

    @staticmethod
    def _connect(cluster: CephCluster) -> Iterator[object]:
        import rados

        client = rados.Rados(conffile=str(cluster.conf))
        client.connect(timeout=30)
        try:
            with client.open_ioctx(cluster.pool) as ioctx:
                yield ioctx
        finally:
            client.shutdown()

    def _image(self, name: str, action: str, *args: object) -> None:
        import rbd

        for ioctx in self._connect(self.cluster):
            with rbd.Image(ioctx, name) as image:
                getattr(image, action)(*args)

    def create(self, name: str, size: int) -> Source:
        self.cluster.rbd("create", "--size", f"{size // MiB}M", f"{self.cluster.pool}/{name}")
        return CephRbdSource(self.cluster.pool, name, conf=str(self.cluster.conf))

    def write(self, name: str, offset: int, data: bytes) -> None:
        self._image(name, "write", data, offset)

    def resize(self, name: str, size: int) -> None:
        self._image(name, "resize", size)

    def remove(self, name: str) -> None:
        self.cluster.rbd("snap", "purge", f"{self.cluster.pool}/{name}")
        self.cluster.rbd("rm", f"{self.cluster.pool}/{name}")

    def content(self, name: str, revision_id: str) -> bytes:
        target = self.workdir / f"{name}-{revision_id}.export"
        target.unlink(missing_ok=True)
        self.cluster.rbd(
            "export", f"{self.cluster.pool}/{name}@lifeboat-{revision_id}", str(target)
        )
        return target.read_bytes()

    def kept_snapshots(self, name: str) -> list[str]:
        listed = self.cluster.rbd("snap", "ls", "--format", "json", f"{self.cluster.pool}/{name}")
        names = [snapshot["name"] for snapshot in json.loads(listed.stdout)]
        return sorted(n.removeprefix("lifeboat-") for n in names if n.startswith("lifeboat-"))


@pytest.fixture(params=["file", "ceph-rbd"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "file":
        return FileBackend(tmp_path)
    need(rbd_modules_importable(), "the Ceph Python modules (python3-rbd) are not importable")
    cluster: CephCluster = request.getfixturevalue("ceph_cluster")
    return RbdBackend(cluster, tmp_path)


def unique_name(request: pytest.FixtureRequest) -> str:
    return (
        f"vm-{request.node.name.split('[')[0][5:25].replace('_', '-')}-{random.randrange(1 << 20)}"
    )


async def backed_up_once(
    backend: Backend, tmp_path: Path, request: pytest.FixtureRequest, verify_fraction: float
) -> tuple[str, Job, Harness, OperationRecord]:
    """A new source full of random data, backed up once (successfully)."""
    name = unique_name(request)
    job = Job(name, "backup01", SCHEDULE, backend.create(name, SIZE))
    backend.write(name, 0, random.randbytes(SIZE))
    harness = Harness(tmp_path / "repo", verify_fraction=verify_fraction)
    first = await harness.backup(job)
    assert first.state == OperationState.SUCCEEDED, first.error
    return name, job, harness, first


async def assert_nothing_left_but(
    backend: Backend, harness: Harness, job: Job, first: OperationRecord
) -> None:
    """After a failed backup: only `first` is there (revision, `last`, the source's
    snapshot), no temporary files; the next backup works."""
    job_dir = harness.base_dir / job.name
    assert [r.id for r in harness.worker.list_revisions(job.name)] == [first.revision_id]
    assert not [p.name for p in job_dir.iterdir() if p.name.endswith(".tmp")]
    assert os.readlink(job_dir / "last") == first.revision_id
    expected = [] if isinstance(backend, FileBackend) else [first.revision_id]
    assert backend.kept_snapshots(job.name) == expected
    again = await harness.backup(job)
    assert again.state == OperationState.SUCCEEDED, again.error
    assert image_of(harness, job.name) == backend.content(job.name, again.revision_id)


def image_of(harness: Harness, job: str) -> bytes:
    return (harness.base_dir / job / "last").read_bytes()


async def test_round_trip_writes_only_changes(
    backend: Backend, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    name = unique_name(request)
    job = Job(name, "backup01", SCHEDULE, backend.create(name, SIZE))
    rng = random.Random(7)
    backend.write(name, 0, rng.randbytes(2 * MiB))
    backend.write(name, 5 * MiB, rng.randbytes(64 * 1024))
    harness = Harness(tmp_path / "repo")

    first = await harness.backup(job)
    assert first.state == OperationState.SUCCEEDED, first.error
    assert image_of(harness, name) == backend.content(name, first.revision_id)
    stored = harness.base_dir / name / first.revision_id
    assert stored.stat().st_blocks * 512 < 3 * MiB, "holes of the source must stay holes"
    keeps_snapshots = not isinstance(backend, FileBackend)
    assert backend.kept_snapshots(name) == ([first.revision_id] if keeps_snapshots else [])

    for _ in range(5):
        backend.write(name, rng.randrange(0, SIZE - 4096) // 4096 * 4096, rng.randbytes(4096))
    backend.write(name, 0, bytes(MiB))  # data turned into zeros: becomes a hole
    second = await harness.backup(job)
    assert second.state == OperationState.SUCCEEDED, second.error
    assert image_of(harness, name) == backend.content(name, second.revision_id)
    meta = harness.worker.get_revision(name, "last")
    assert meta.parent == first.revision_id
    assert meta.stats["full"] is False
    assert meta.stats["bytes-written"] <= 5 * 16 * 1024
    assert meta.verification.state is VerificationState.PASSED
    previous = harness.worker.get_revision(name, first.revision_id)
    assert previous.stats["full"] is True
    # Only the newest revision's snapshot is kept: it is the next backup's diff base.
    assert backend.kept_snapshots(name) == ([second.revision_id] if keeps_snapshots else [])


async def test_resized_source(
    backend: Backend, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    name = unique_name(request)
    job = Job(name, "backup01", SCHEDULE, backend.create(name, SIZE))
    backend.write(name, SIZE - 10_000, random.randbytes(10_000))
    harness = Harness(tmp_path / "repo")
    for size in (SIZE, SIZE + 3 * MiB, SIZE - 2 * MiB):
        backend.resize(name, size)
        backend.write(name, size - 5000, random.randbytes(5000))
        record = await harness.backup(job)
        assert record.state == OperationState.SUCCEEDED, record.error
        assert image_of(harness, name) == backend.content(name, record.revision_id)


async def test_missing_source_fails_cleanly(
    backend: Backend, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    name = unique_name(request)
    job = Job(name, "backup01", SCHEDULE, backend.create(name, SIZE))
    harness = Harness(tmp_path / "repo")
    assert (await harness.backup(job)).state == OperationState.SUCCEEDED
    backend.remove(name)
    record = await harness.backup(job)
    assert record.state == OperationState.FAILED
    assert "not found" in record.error or "cannot open" in record.error, record.error
    assert len(harness.worker.list_revisions(name)) == 1
    leftovers = [p.name for p in (harness.base_dir / name).iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    assert "failed" in (harness.base_dir / name / "log").read_text()


async def test_incremental_shares_extents_on_xfs(
    backend: Backend, xfs_dir: Path, request: pytest.FixtureRequest
) -> None:
    name = unique_name(request)
    job = Job(name, "backup01", SCHEDULE, backend.create(name, SIZE))
    backend.write(name, 0, random.randbytes(SIZE))
    harness = Harness(xfs_dir / "repo")
    assert (await harness.backup(job)).state == OperationState.SUCCEEDED
    before = os.statvfs(xfs_dir)
    backend.write(name, 3 * MiB, random.randbytes(4096))
    record = await harness.backup(job)
    assert record.state == OperationState.SUCCEEDED, record.error
    after = os.statvfs(xfs_dir)
    used = (before.f_bfree - after.f_bfree) * before.f_frsize
    assert used < MiB, (
        f"the incremental revision used {used} bytes; it should share its parent's extents"
    )
    assert image_of(harness, name) == backend.content(name, record.revision_id)


async def test_rot_in_parent_is_caught_by_the_next_verification(
    backend: Backend, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """An unchanged block whose stored copy rotted reaches the new revision through the
    clone; the verification sample (here: every block) compares it with the source."""
    name, job, harness, first = await backed_up_once(backend, tmp_path, request, 1.0)
    stored = harness.base_dir / name / first.revision_id
    with stored.open("r+b") as image:
        image.seek(6 * MiB + 100)
        image.write(b"\x00\x01\x02")
    backend.write(name, MiB, random.randbytes(4096))  # an unrelated change

    second = await harness.backup(job)
    assert second.state == OperationState.FAILED
    meta = harness.worker.get_revision(name, second.revision_id)
    assert meta.trust is Trust.DISTRUSTED
    assert meta.verification.mismatched_offsets == (6 * MiB,)
    third = await harness.backup(job)
    assert third.state == OperationState.SUCCEEDED, third.error
    assert image_of(harness, name) == backend.content(name, third.revision_id)


async def test_verification_records_exactly_the_sample(
    backend: Backend, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Sampled blocks the copy writes are checked by the copy, the rest by a helper thread
    reading the source on its own: together exactly the sample, each block once."""
    name = unique_name(request)
    job = Job(name, "backup01", SCHEDULE, backend.create(name, SIZE))
    rng = random.Random(11)
    backend.write(name, 0, rng.randbytes(6 * MiB))
    harness = Harness(tmp_path / "repo", verify_fraction=0.25)
    blocks = SIZE // 16384
    for round_number in range(4):
        for _ in range(40):
            backend.write(name, rng.randrange(0, SIZE // 4096) * 4096, rng.randbytes(4096))
        record = await harness.backup(job)
        assert record.state == OperationState.SUCCEEDED, record.error
        verification = harness.worker.get_revision(name, record.revision_id).verification
        assert verification.state is VerificationState.PASSED
        assert verification.blocks_total == blocks
        assert verification.blocks_checked == blocks // 4, round_number
        runs = verification.checked_runs
        assert sum(count for _, count in runs) == blocks // 4
        assert all(a + n < b for (a, n), (b, _) in itertools.pairwise(runs))
        assert image_of(harness, name) == backend.content(name, record.revision_id)


async def test_cancel_mid_copy_leaves_nothing_and_the_next_backup_works(
    backend: Backend,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cancel while the copy (and, for named extents, the helper checking the rest of the
    sample) runs ends the operation CANCELLED with no trace in the repository."""
    name, job, harness, first = await backed_up_once(backend, tmp_path, request, 0.5)
    backend.write(name, 3 * MiB, random.randbytes(64 * 1024))

    copying = threading.Event()
    cancelled = threading.Event()
    apply_data = BlockWriter.apply_data

    def apply_data_once_cancelled(writer: BlockWriter, offset: int, data: memoryview) -> None:
        copying.set()
        assert cancelled.wait(10)
        apply_data(writer, offset, data)

    monkeypatch.setattr(BlockWriter, "apply_data", apply_data_once_cancelled)
    record = await harness.start(job)
    assert await asyncio.to_thread(copying.wait, 10)
    harness.registry.cancel(record.name)
    cancelled.set()
    record = await harness.finish(record)
    assert record.state == OperationState.CANCELLED, record.error
    monkeypatch.undo()
    await assert_nothing_left_but(backend, harness, job, first)


async def test_failed_commit_keeps_nothing_of_the_revision(
    backend: Backend,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The repository filling up while the revision is committed: no revision, no temporary
    files, and no snapshot of it left in the source; the next backup works."""
    name, job, harness, first = await backed_up_once(backend, tmp_path, request, 0.05)
    backend.write(name, 2 * MiB, random.randbytes(4096))

    def disk_full(*args: object) -> RevisionMeta:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(RevisionWriter, "commit", disk_full)
    record = await harness.backup(job)
    assert record.state == OperationState.FAILED
    assert "full" in record.error
    monkeypatch.undo()
    await assert_nothing_left_but(backend, harness, job, first)
