"""The one contract every restore target keeps: a file, a block device (a loop device) and
a real Ceph RBD image, through the real restore worker, restoring revisions of the real
backup worker.

A restored image is byte-identical to the revision, holes included (they take no space
where the target can hold holes); an existing target is refused without overwrite and
replaced with it; a failed restore leaves no partial output where the target promises
that; a target outside restore-targets is refused with nothing written; a write error
names the target and the offset. The rest of the file: which paths are allowed, and what
only files or block devices do.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import re
import stat
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from lifeboat.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LifeboatError,
    NotFound,
    PermissionDenied,
)
from lifeboat.model import CephRbdSource, FileSource, Job, Schedule, TagSpec
from lifeboat.operations import OperationRecord, OperationRegistry, OperationState
from lifeboat.repository import Repository
from restored.copy import copy_revision
from restored.reader import RevisionReader
from restored.targets import (
    BlockDeviceTarget,
    FileTarget,
    RbdImageTarget,
    TargetPolicy,
    resolve_target,
)
from restored.worker import RestoreRequest, RestoreSettings, RestoreWorker
from tests.support.ceph import CephCluster, rbd_modules_importable
from tests.support.harness import Harness
from tests.support.images import flip_byte
from tests.support.loopfs import loop_device, loop_mount
from tests.support.needs import need, need_root
from tests.test_restore_domain import write_image

KiB = 1024
MiB = 1024 * KiB
SIZE = 32 * MiB
# Data in RBD objects (4 MiB) 0, 2 and 7 only: holes stay holes even at object granularity.
EXTENTS = [(0, 300 * KiB), (9 * MiB, MiB), (SIZE - 64 * KiB, 64 * KiB)]
DEVICE_SIZE = SIZE + MiB
WRITES_FAIL_FROM = MiB
"""Where writes fail once `break_writes` has broken a target (a file: anywhere)."""
SCHEDULE = Schedule("default", (TagSpec("hourly", dt.timedelta(hours=1), 24),))


class Backend(abc.ABC):
    """Makes and inspects restore targets of one kind."""

    allowed: str
    """Its entry in restore-targets."""
    creates: bool
    """A restore creates the target, and a failed one removes it again."""
    atomic: bool
    """An existing target is replaced at once at the end: a failed restore keeps it as it
    was (otherwise it is partially overwritten, and the restore says so)."""
    resizes: bool
    """An existing target ends the revision's size (otherwise bytes past it stay)."""
    cluster: CephRbdSource | None = None

    def configured(self, job: Job) -> Job:
        """The job as restored's config gives it."""
        return job

    @abc.abstractmethod
    def fresh(self, name: str) -> str:
        """A target nothing was restored to (a new one where the kind can be created)."""

    @abc.abstractmethod
    def existing(self, name: str, content: bytes) -> str:
        """A target that holds `content`."""

    @abc.abstractmethod
    def read(self, name: str) -> bytes | None:
        """The target's content; None when there is no such target."""

    def allocated(self, name: str) -> int | None:
        """Bytes the target takes; None where it cannot keep holes."""
        return None

    def leftovers(self) -> list[str]:
        """Temporary files a restore left."""
        return []

    @abc.abstractmethod
    def break_writes(self, name: str) -> int:
        """Make writes to the (opened) target fail; returns the offset from which they do."""


class FileBackend(Backend):
    """Files in a directory on a small tmpfs, which can be filled up."""

    creates = atomic = resizes = True

    def __init__(self, mount: Path) -> None:
        self.mount = mount
        self.directory = mount / "restore"
        self.directory.mkdir()
        self.allowed = str(self.directory)

    def fresh(self, name: str) -> str:
        return str(self.directory / f"{name}.raw")

    def existing(self, name: str, content: bytes) -> str:
        (self.directory / f"{name}.raw").write_bytes(content)
        return self.fresh(name)

    def read(self, name: str) -> bytes | None:
        path = self.directory / f"{name}.raw"
        return path.read_bytes() if path.exists() else None

    def allocated(self, name: str) -> int | None:
        return (self.directory / f"{name}.raw").stat().st_blocks * 512

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.directory.iterdir() if p.name.endswith(".tmp"))

    def break_writes(self, name: str) -> int:
        free = os.statvfs(self.mount)
        with (self.mount / "filler").open("wb") as filler:
            os.posix_fallocate(filler.fileno(), 0, free.f_bavail * free.f_frsize)
        return 0


class DeviceBackend(Backend):
    """A loop device on a file: it always exists, so it is never created or removed."""

    creates = atomic = resizes = False

    def __init__(self, backing: Path, device: str) -> None:
        self.backing = backing
        self.device = device
        self.allowed = device

    def fresh(self, name: str) -> str:
        return self.existing(name, b"\xa5" * DEVICE_SIZE)  # stale bytes, also in holes

    def existing(self, name: str, content: bytes) -> str:
        with open(self.device, "r+b") as disk:
            disk.write(content)
            disk.flush()
            os.fsync(disk.fileno())
        return self.device

    def read(self, name: str) -> bytes | None:
        with open(self.device, "rb") as disk:
            return disk.read()

    def break_writes(self, name: str) -> int:
        os.truncate(self.backing, WRITES_FAIL_FROM)
        subprocess.run(["losetup", "--set-capacity", self.device], check=True)
        return WRITES_FAIL_FROM


class RbdBackend(Backend):
    """Images in the pool of the real Ceph cluster, which the restored job's config names
    (a Ceph VM restored to its own cluster)."""

    creates = resizes = True
    atomic = False

    def __init__(self, cluster: CephCluster, workdir: Path) -> None:
        self.ceph = cluster
        self.workdir = workdir
        self.allowed = f"rbd:{cluster.pool}"
        self.cluster = CephRbdSource(cluster.pool, "source", conf=str(cluster.conf))
        self.names: set[str] = set()

    def configured(self, job: Job) -> Job:
        return replace(job, source=replace(self.cluster, image=job.name))

    def spec(self, name: str) -> str:
        self.names.add(name)
        return f"{self.ceph.pool}/{name}"

    def fresh(self, name: str) -> str:
        return f"rbd:{self.spec(name)}"

    def existing(self, name: str, content: bytes) -> str:
        import rados
        import rbd

        self.ceph.rbd("create", "--size", f"{len(content) // MiB}M", self.spec(name))
        client = rados.Rados(conffile=str(self.ceph.conf))
        client.connect(timeout=30)
        try:
            with client.open_ioctx(self.ceph.pool) as ioctx, rbd.Image(ioctx, name) as image:
                image.write(content, 0)
        finally:
            client.shutdown()
        return self.fresh(name)

    def _exists(self, name: str) -> bool:
        return name in self.ceph.rbd("ls", self.ceph.pool).stdout.split()

    def read(self, name: str) -> bytes | None:
        if not self._exists(name):
            return None
        export = self.workdir / f"{name}.export"
        export.unlink(missing_ok=True)
        self.ceph.rbd("export", self.spec(name), str(export))
        return export.read_bytes()

    def allocated(self, name: str) -> int | None:
        listed = self.ceph.rbd("du", "--format", "json", self.spec(name)).stdout
        return int(json.loads(listed)["images"][0]["used_size"])

    def break_writes(self, name: str) -> int:
        self.ceph.rbd(
            "resize", "--allow-shrink", "--size", f"{WRITES_FAIL_FROM // MiB}M", self.spec(name)
        )
        return WRITES_FAIL_FROM

    def remove_images(self) -> None:
        for name in self.names:
            if self._exists(name):
                self.ceph.rbd("rm", self.spec(name))


@pytest.fixture(params=["file", "block-device", "ceph-rbd"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "ceph-rbd":
        need(rbd_modules_importable(), "the Ceph Python modules (python3-rbd) are not importable")
        rbd_backend = RbdBackend(request.getfixturevalue("ceph_cluster"), tmp_path)
        try:
            yield rbd_backend
        finally:
            rbd_backend.remove_images()
        return
    need_root()
    if request.param == "file":
        with loop_mount("tmpfs", 4 * SIZE, tmp_path) as mount:
            yield FileBackend(mount)
        return
    backing = tmp_path / "disk.img"
    backing.write_bytes(bytes(DEVICE_SIZE))
    with loop_device(backing) as device:
        yield DeviceBackend(backing, device)


@dataclass
class Revision:
    """A revision of a job, written by the real backup worker."""

    job: Job
    id: str
    content: bytes
    base_dir: Path

    def image(self) -> Path:
        return self.base_dir / self.job.name / self.id


def unique_name(request: pytest.FixtureRequest) -> str:
    test = request.node.name.split("[")[0].removeprefix("test_")[:20].replace("_", "-")
    return f"vm-{test}-{random.randrange(1 << 20)}"


@pytest.fixture
async def revision(tmp_path: Path, request: pytest.FixtureRequest) -> Revision:
    name = unique_name(request)
    source = tmp_path / "source.raw"
    content = write_image(source, SIZE, EXTENTS)
    job = Job(name, "backup01", SCHEDULE, FileSource(str(source)))
    harness = Harness(tmp_path / "repo")
    record = await harness.backup(job)
    assert record.state == OperationState.SUCCEEDED, record.error
    return Revision(job, record.revision_id, content, tmp_path / "repo")


class Restorer:
    """The real restore worker of host backup01, driven from the test's event loop."""

    def __init__(self, revision: Revision, backend: Backend, allowed: tuple[str, ...]) -> None:
        self.registry = OperationRegistry("backup01")
        self.registry.bind_loop(asyncio.get_running_loop())
        settings = RestoreSettings(
            host="backup01",
            base_dir=revision.base_dir,
            restore_limit=2,
            restore_targets=allowed,
            stream_limit=1,
            stream_idle_timeout=dt.timedelta(minutes=1),
            jobs={revision.job.name: backend.configured(revision.job)},
        )
        self.worker = RestoreWorker(settings, self.registry)
        self.job = revision.job.name

    async def restore(self, target: str, overwrite: bool) -> OperationRecord:
        record = self.worker.start_restore(RestoreRequest(self.job, target, overwrite=overwrite))
        async for update in self.registry.watch(record.name):
            record = update
        return record


@contextlib.asynccontextmanager
async def restorer(
    revision: Revision, backend: Backend, allowed: tuple[str, ...] | None = None
) -> AsyncIterator[Restorer]:
    running = Restorer(revision, backend, (backend.allowed,) if allowed is None else allowed)
    try:
        yield running
    finally:
        running.worker.shutdown()


def restored_image(backend: Backend, revision: bytes, before: bytes | None) -> bytes:
    """What the target holds after restoring `revision` over `before`."""
    if backend.resizes or before is None:
        return revision
    return revision + before[len(revision) :]


# --- the contract ----------------------------------------------------------------------


async def test_a_restored_image_is_identical_including_holes(
    backend: Backend, revision: Revision, request: pytest.FixtureRequest
) -> None:
    name = unique_name(request)
    target = backend.fresh(name)
    before = backend.read(name)
    async with restorer(revision, backend) as running:
        record = await running.restore(target, overwrite=not backend.creates)
    assert record.state == OperationState.SUCCEEDED, record.error
    assert backend.read(name) == restored_image(backend, revision.content, before)
    allocated = backend.allocated(name)
    if allocated is not None:
        assert allocated < SIZE // 2, "holes of the revision must stay holes"
    assert backend.leftovers() == []


async def test_an_existing_target_is_refused_without_overwrite_and_replaced_with_it(
    backend: Backend, revision: Revision, request: pytest.FixtureRequest
) -> None:
    name = unique_name(request)
    old = b"\x5a" * DEVICE_SIZE  # also where the revision has holes, and past its end
    target = backend.existing(name, old)
    async with restorer(revision, backend) as running:
        with pytest.raises(AlreadyExists, match="overwrite"):
            await running.restore(target, overwrite=False)
        assert backend.read(name) == old
        record = await running.restore(target, overwrite=True)
    assert record.state == OperationState.SUCCEEDED, record.error
    assert backend.read(name) == restored_image(backend, revision.content, old)
    assert backend.leftovers() == []


@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "existing"])
async def test_a_failed_restore_leaves_no_partial_output_where_it_can(
    backend: Backend, revision: Revision, request: pytest.FixtureRequest, existing: bool
) -> None:
    """A stored block that does not match its manifest fails the restore mid-copy."""
    name = unique_name(request)
    old = b"\x5a" * DEVICE_SIZE
    target = backend.existing(name, old) if existing else backend.fresh(name)
    before = backend.read(name)
    flip_byte(revision.image(), 9 * MiB + 100)
    async with restorer(revision, backend) as running:
        record = await running.restore(target, overwrite=existing or not backend.creates)
    assert record.state == OperationState.FAILED
    assert str(9 * MiB) in record.error
    if backend.atomic or (backend.creates and not existing):
        assert backend.read(name) == before, "the target is as it was before the restore"
        assert "partially overwritten" not in record.error
    else:
        assert backend.read(name) is not None
        assert record.error.endswith("is partially overwritten"), record.error
    assert backend.leftovers() == []


async def test_a_target_outside_restore_targets_is_refused_with_nothing_written(
    backend: Backend, revision: Revision, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    name = unique_name(request)
    target = backend.fresh(name)
    before = backend.read(name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    async with restorer(revision, backend, (str(elsewhere), "rbd:elsewhere")) as running:
        with pytest.raises(PermissionDenied, match="restore-targets"):
            await running.restore(target, overwrite=True)
        assert running.registry.select() == []
    assert backend.read(name) == before
    assert backend.leftovers() == []


def test_a_write_error_names_the_target_and_the_offset(
    backend: Backend, revision: Revision, request: pytest.FixtureRequest
) -> None:
    name = unique_name(request)
    text = backend.fresh(name)
    policy = TargetPolicy("backup01", (backend.allowed,), revision.base_dir)
    target = resolve_target(text, policy, backend.cluster)
    job_dir = Repository(revision.base_dir).job(revision.job.name)
    with RevisionReader(job_dir, job_dir.revision(revision.id)) as reader:
        target.open(reader.size, overwrite=not backend.creates)
        failing_from = backend.break_writes(name)
        with pytest.raises(OSError) as raised:
            copy_revision(reader, target, lambda done, total: None, lambda: None)
    left = target.abort()
    message = str(raised.value)
    assert text in message, message
    found = re.search(r" at offset (\d+)", message)
    assert found is not None, message
    assert failing_from <= int(found[1]) < SIZE, message
    assert ("partially overwritten" in left) == (not backend.creates)
    if backend.creates:
        assert backend.read(name) is None
    assert backend.leftovers() == []


# --- which targets are allowed -----------------------------------------------------------


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """restore/ (allowed), restore-evil/ and outside/ (not), repo/ (the repository)."""
    paths = {name: tmp_path / name for name in ("restore", "restore-evil", "outside", "repo")}
    for path in paths.values():
        path.mkdir()
    (paths["restore"] / "sub").mkdir()
    (paths["restore"] / "escape").symlink_to(paths["outside"])
    (paths["restore"] / "link.raw").symlink_to(paths["outside"] / "x.raw")
    (paths["restore"] / "inner.raw").symlink_to(paths["restore"] / "sub" / "y.raw")
    return paths


def policy_for(layout: dict[str, Path], *extra: str) -> TargetPolicy:
    return TargetPolicy("backup01", (str(layout["restore"]), "rbd:restore", *extra), layout["repo"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("{restore}/vm.raw", "{restore}/vm.raw", id="file-under-prefix"),
        pytest.param("{restore}/sub/../vm.raw", "{restore}/vm.raw", id="dotdot-inside"),
        pytest.param("{restore}/inner.raw", "{restore}/sub/y.raw", id="symlink-inside"),
        pytest.param("rbd:restore/vm-web01", "rbd:restore/vm-web01", id="rbd-allowed-pool"),
    ],
)
def test_allowed_targets_resolve(layout: dict[str, Path], text: str, expected: str) -> None:
    names = {name: str(path) for name, path in layout.items()}
    target = resolve_target(text.format(**names), policy_for(layout))
    assert target.key == expected.format(**names)


@pytest.mark.parametrize(
    ("text", "error", "words"),
    [
        pytest.param("{outside}/vm.raw", PermissionDenied, "not under", id="outside"),
        pytest.param("{restore}/../outside/vm.raw", PermissionDenied, "not under", id="dotdot"),
        pytest.param("{restore}/escape/vm.raw", PermissionDenied, "not under", id="symlink-dir"),
        pytest.param("{restore}/link.raw", PermissionDenied, "not under", id="symlink-file"),
        pytest.param("{restore-evil}/vm.raw", PermissionDenied, "not under", id="string-prefix"),
        pytest.param("{restore}/repo/vm.raw", PermissionDenied, "repository", id="in-repo"),
        pytest.param("rbd:other/vm", PermissionDenied, "pool 'other'", id="rbd-other-pool"),
        pytest.param("vm.raw", InvalidArgument, "target", id="relative"),
        pytest.param("", InvalidArgument, "target", id="empty"),
        pytest.param("rbd:restore", InvalidArgument, "rbd:POOL/IMAGE", id="rbd-no-image"),
        pytest.param("rbd:restore/a/b", InvalidArgument, "rbd:POOL/IMAGE", id="rbd-namespace"),
        pytest.param("rbd:restore/vm@snap", InvalidArgument, "rbd:POOL/IMAGE", id="rbd-snapshot"),
    ],
)
def test_refused_targets(
    layout: dict[str, Path], text: str, error: type[LifeboatError], words: str
) -> None:
    (layout["restore"] / "repo").symlink_to(layout["repo"])
    names = {name: str(path) for name, path in layout.items()}
    with pytest.raises(error) as raised:
        resolve_target(text.format(**names), policy_for(layout))
    assert words in str(raised.value)


def test_repository_under_an_allowed_prefix_is_still_refused(tmp_path: Path) -> None:
    policy = TargetPolicy("backup01", (str(tmp_path),), tmp_path / "repo")
    (tmp_path / "repo").mkdir()
    with pytest.raises(PermissionDenied, match="repository"):
        resolve_target(str(tmp_path / "repo" / "vm-web01" / "x.raw"), policy)
    assert isinstance(resolve_target(str(tmp_path / "x.raw"), policy), FileTarget)


def test_rbd_target_parts(layout: dict[str, Path]) -> None:
    target = resolve_target("rbd:restore/vm-web01.root", policy_for(layout))
    assert isinstance(target, RbdImageTarget)
    assert (target.pool, target.image_name) == ("restore", "vm-web01.root")


# --- files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "error"),
    [
        pytest.param("sub", InvalidArgument, id="directory"),
        pytest.param("missing/vm.raw", NotFound, id="missing-directory"),
    ],
)
def test_open_refuses(layout: dict[str, Path], name: str, error: type[LifeboatError]) -> None:
    policy = policy_for(layout)
    target = resolve_target(str(layout["restore"] / name), policy)
    assert isinstance(target, FileTarget)
    with pytest.raises(error):
        target.open(4096, overwrite=True)
    assert sorted(p.name for p in layout["restore"].iterdir()) == [
        "escape",
        "inner.raw",
        "link.raw",
        "sub",
    ]


def test_directory_swapped_for_a_symlink_after_the_check_is_refused(
    layout: dict[str, Path],
) -> None:
    policy = policy_for(layout)
    target = resolve_target(str(layout["restore"] / "sub" / "vm.raw"), policy)
    (layout["restore"] / "sub").rmdir()
    (layout["restore"] / "sub").symlink_to(layout["outside"])
    with pytest.raises(PermissionDenied):
        target.open(4096, overwrite=False)
    assert list(layout["outside"].iterdir()) == []


@pytest.mark.parametrize(
    ("existing", "final"),
    [pytest.param(None, 0o600, id="new-file"), pytest.param(0o644, 0o644, id="replaced")],
)
def test_the_file_being_restored_is_private_until_it_is_in_place(
    layout: dict[str, Path], existing: int | None, final: int
) -> None:
    path = layout["restore"] / "vm.raw"
    if existing is not None:
        path.write_bytes(b"old")
        os.chmod(path, existing)
    target = resolve_target(str(path), policy_for(layout))
    old_umask = os.umask(0o022)
    try:
        target.open(4096, overwrite=True)
    finally:
        os.umask(old_umask)
    target.write(0, memoryview(b"new data"))
    (temporary,) = layout["restore"].glob(".vm.raw.*.tmp")
    assert stat.S_IMODE(temporary.stat().st_mode) == 0o600
    target.finish()
    assert stat.S_IMODE(path.stat().st_mode) == final
    assert path.read_bytes()[:8] == b"new data"


# --- block devices -----------------------------------------------------------------------


def test_a_block_device_in_use_is_refused(tmp_path: Path) -> None:
    need_root()
    backing = tmp_path / "disk.img"
    backing.write_bytes(b"\xa5" * MiB)
    with loop_device(backing) as device:
        policy = TargetPolicy("backup01", (device,), tmp_path / "repo")
        target = resolve_target(device, policy)
        assert isinstance(target, BlockDeviceTarget)
        claimed = os.open(device, os.O_RDONLY | os.O_EXCL)  # as a mount would claim it
        try:
            with pytest.raises(FailedPrecondition, match="in use"):
                target.open(4096, overwrite=True)
        finally:
            os.close(claimed)
        with pytest.raises(FailedPrecondition, match="holds 1048576 bytes"):
            target.open(2 * MiB, overwrite=True)
    assert backing.read_bytes() == b"\xa5" * MiB
