"""pytest plugin: real filesystems on loop devices (XFS with reflinks, ext4 without).

Enabled from ``tests/conftest.py`` via ``pytest_plugins``. The session-scoped fixtures
``xfs_mount`` and ``ext4_mount`` yield the mount point of a fresh filesystem; the
function-scoped ``xfs_dir`` and ``ext4_dir`` yield a new empty directory on it that is
removed after the test. They skip (or fail under LIFEBOAT_REQUIRE_ALL=1) where we are
not root or the tools are missing. Benchmarks can use ``loop_mount`` directly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.needs import need, need_root

GiB = 1024**3
MiB = 1024**2

MKFS = {
    "xfs": ["mkfs.xfs", "-q", "-m", "reflink=1"],
    "ext4": ["mkfs.ext4", "-q", "-F"],
    "btrfs": ["mkfs.btrfs", "-q"],
}


class LoopMountError(RuntimeError):
    """A command of setting up a loop-mounted filesystem failed."""


def _run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LoopMountError(f"{' '.join(command)}: {result.stderr.strip() or result.stdout}")
    return result.stdout.strip()


def _unmount(mount_point: Path) -> None:
    """Unmount, retrying lazily if something still has the filesystem busy."""
    try:
        _run("umount", str(mount_point))
    except LoopMountError:
        _run("umount", "--lazy", str(mount_point))


@contextlib.contextmanager
def loop_device(image: Path) -> Iterator[str]:
    """A loop device on the file `image`, detached on exit. Needs root."""
    device = _run("losetup", "--find", "--show", str(image))
    try:
        yield device
    finally:
        _run("losetup", "--detach", device)


@contextlib.contextmanager
def _mounted(source: str, mount_point: Path, *options: str) -> Iterator[Path]:
    mount_point.mkdir(parents=True, exist_ok=True)
    _run("mount", *options, source, str(mount_point))
    try:
        yield mount_point
    finally:
        _unmount(mount_point)


@contextlib.contextmanager
def loop_mount(fs_type: str, size: int, workdir: Path, preallocate: bool = False) -> Iterator[Path]:
    """Mount a new `fs_type` filesystem of `size` bytes under `workdir`; yield the mount point.

    `fs_type` is "xfs" (reflink=1), "ext4", "btrfs" (each a sparse image file in `workdir`
    on a loop device) or "tmpfs". With `preallocate` the image file is allocated up front,
    so benchmarks do not time the first touch of its backing store. Everything is unmounted,
    detached and removed on exit, also when the body fails. Needs root.
    """
    workdir = Path(workdir)
    mount_point = workdir / f"{fs_type}-mnt"
    if fs_type == "tmpfs":
        with _mounted("tmpfs", mount_point, "-t", "tmpfs", "-o", f"size={size}"):
            yield mount_point
        return
    if fs_type not in MKFS:
        raise ValueError(f"unknown filesystem type {fs_type!r}")
    image = workdir / f"{fs_type}.img"
    with open(image, "wb") as file:
        file.truncate(size)
        if preallocate:
            os.posix_fallocate(file.fileno(), 0, size)
    try:
        _run(*MKFS[fs_type], str(image))
        with loop_device(image) as device, _mounted(device, mount_point):
            yield mount_point
    finally:
        image.unlink(missing_ok=True)


@contextlib.contextmanager
def _session_mount(fs_type: str, size: int, factory: pytest.TempPathFactory) -> Iterator[Path]:
    need_root()
    need(shutil.which(MKFS[fs_type][0]) is not None, f"needs {MKFS[fs_type][0]}")
    need(shutil.which("losetup") is not None, "needs losetup")
    stack = contextlib.ExitStack()
    try:
        mount_point = stack.enter_context(loop_mount(fs_type, size, factory.mktemp(fs_type)))
    except LoopMountError as error:
        need(False, f"cannot loop-mount {fs_type}: {error}")
        raise
    with stack:
        yield mount_point


@pytest.fixture(scope="session")
def xfs_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A ~2 GiB XFS with reflink=1 on a loop device, for the whole session."""
    with _session_mount("xfs", 2 * GiB, tmp_path_factory) as mount_point:
        yield mount_point


@pytest.fixture(scope="session")
def ext4_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 512 MiB ext4 (no reflinks) on a loop device, for the whole session."""
    with _session_mount("ext4", 512 * MiB, tmp_path_factory) as mount_point:
        yield mount_point


def _fresh_dir(mount_point: Path) -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="test-", dir=mount_point))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def xfs_dir(xfs_mount: Path) -> Iterator[Path]:
    """A new empty directory on the session's XFS (reflinks work), removed afterwards."""
    yield from _fresh_dir(xfs_mount)


@pytest.fixture
def ext4_dir(ext4_mount: Path) -> Iterator[Path]:
    """A new empty directory on the session's ext4 (no reflinks), removed afterwards."""
    yield from _fresh_dir(ext4_mount)
