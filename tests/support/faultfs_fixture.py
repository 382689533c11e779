"""pytest plugin: a faultfs mount (tests/support/faultfs.py) whose reads and writes fail
where a test says, served by its own process.

Enabled from ``tests/conftest.py`` via ``pytest_plugins``. The ``faultfs`` fixture mounts
a fresh directory (``below``) at ``path`` without faults and unmounts it at the end, also
when the test fails; the test switches faults on and off with ``set_faults``. It skips
(or fails under LIFEBOAT_REQUIRE_ALL=1) where FUSE is unavailable: no /dev/fuse, not root
(libfuse mounts without fusermount only as root), or no fusepy or libfuse.so.2.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.faultfs import CONTROL
from tests.support.needs import need
from tests.support.processes import REPO

MOUNT_TIMEOUT = 10.0


class FaultMountError(RuntimeError):
    """faultfs did not mount or unmount."""


def fuse_available() -> tuple[bool, str]:
    """Whether a faultfs can be mounted here, and if not, why."""
    if not os.path.exists("/dev/fuse"):
        return False, "needs /dev/fuse (FUSE)"
    if os.geteuid() != 0:
        return False, "needs root (FUSE mounts without fusermount)"
    try:
        import fuse  # noqa: F401  (fusepy; loads libfuse.so.2)
    except (ImportError, OSError) as error:
        return False, f"needs fusepy and libfuse.so.2 (Debian libfuse2): {error}"
    return True, ""


@dataclass
class FaultMount:
    """A mounted faultfs: `path` shows `below`, failing as `set_faults` says."""

    below: Path
    path: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def set_faults(self, *faults: str) -> None:
        """Replace the faults in force: each `fail-read NAME:OFFSET[:LENGTH]` or
        `fail-write NAME:OFFSET`, NAME a glob of paths relative to `below`; none: no
        faults. In force when this returns."""
        (self.path / CONTROL).write_text("".join(f"{fault}\n" for fault in faults))

    def faults(self) -> str:
        return (self.path / CONTROL).read_text()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _wait_mounted(mount: FaultMount) -> None:
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not os.path.ismount(mount.path):
        if mount.process.poll() is not None or time.monotonic() > deadline:
            raise FaultMountError(f"faultfs did not mount {mount.path}:\n{mount.log()}")
        time.sleep(0.02)


def _mounted(path: Path) -> bool:
    """Whether `path` is a mount point, also when its filesystem's process is gone (a
    stat of it then fails, so `os.path.ismount` says no)."""
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == str(path) for line in mounts)


def _unmount(mount: FaultMount) -> None:
    """Unmount and let the process end. If something still holds the mount busy, detach
    it lazily and stop the process, which fails what is still open."""
    if _mounted(mount.path):
        done = subprocess.run(["umount", str(mount.path)], capture_output=True, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "--lazy", str(mount.path)], capture_output=True, check=True)
            mount.process.terminate()
    try:
        mount.process.wait(timeout=MOUNT_TIMEOUT)
    except subprocess.TimeoutExpired:
        mount.process.kill()
        mount.process.wait()


@contextlib.contextmanager
def faultfs_mounted(below: Path, mount_point: Path, log_path: Path) -> Iterator[FaultMount]:
    """Mount a faultfs of `below` at `mount_point` (both created); unmount on exit."""
    below.mkdir(parents=True, exist_ok=True)
    mount_point.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.faultfs", str(below), str(mount_point)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
    mount = FaultMount(below, mount_point, process, log_path)
    try:
        _wait_mounted(mount)
        yield mount
    finally:
        _unmount(mount)


@pytest.fixture
def faultfs(tmp_path: Path) -> Iterator[FaultMount]:
    """A faultfs of the empty directory `tmp_path/below`, mounted at `tmp_path/faultfs`."""
    available, reason = fuse_available()
    need(available, reason)
    with faultfs_mounted(
        tmp_path / "below", tmp_path / "faultfs", tmp_path / "faultfs.log"
    ) as mount:
        yield mount
