"""The clone primitive on a real XFS (reflinks) and a real ext4 (sparse-copy fallback)."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lifeboat import clone
from tests.support.loopfs import loop_mount
from tests.support.needs import need, need_root

MiB = 1024 * 1024


def write_sparse(path: Path, size: int, pieces: dict[int, bytes]) -> None:
    """A file of `size` bytes: `pieces` at their offsets, holes everywhere else."""
    with open(path, "wb") as file:
        file.truncate(size)
        for offset, data in pieces.items():
            file.seek(offset)
            file.write(data)
        file.flush()
        os.fsync(file.fileno())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def data_ranges(path: Path) -> list[tuple[int, int]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return list(clone.data_extents(fd, os.fstat(fd).st_size))
    finally:
        os.close(fd)


def free_bytes(directory: Path) -> int:
    os.sync()
    stat = os.statvfs(directory)
    return stat.f_bfree * stat.f_frsize


@pytest.fixture
def random_file(xfs_dir: Path) -> Path:
    path = xfs_dir / "source"
    write_sparse(path, 8 * MiB, {0: os.urandom(8 * MiB)})
    return path


# --- reflinks on XFS ------------------------------------------------------------------


def test_reflink_shares_extents(random_file: Path) -> None:
    need(shutil.which("filefrag") is not None, "needs filefrag (e2fsprogs)")
    destination = random_file.parent / "clone"
    clone.reflink(random_file, destination)
    assert sha(destination) == sha(random_file)
    report = subprocess.run(
        ["filefrag", "-v", str(destination)], capture_output=True, text=True, check=True
    ).stdout
    assert "shared" in report


def test_reflink_costs_no_space(random_file: Path) -> None:
    before = free_bytes(random_file.parent)
    for index in range(4):  # 32 MiB if these were copies
        clone.reflink(random_file, random_file.parent / f"clone-{index}")
    assert before - free_bytes(random_file.parent) < 2 * MiB


def test_writing_the_clone_leaves_the_source_alone(random_file: Path) -> None:
    original = sha(random_file)
    destination = random_file.parent / "clone"
    clone.reflink(random_file, destination)
    with open(destination, "r+b") as file:
        file.seek(3 * MiB + 123)
        file.write(b"\xff" * 70000)
    assert sha(random_file) == original
    assert sha(destination) != original


def test_reflink_keeps_holes_size_and_mode(xfs_dir: Path) -> None:
    source = xfs_dir / "sparse"
    write_sparse(source, 64 * MiB + 5, {MiB: b"x" * MiB})
    os.chmod(source, 0o640)
    destination = xfs_dir / "clone"
    clone.reflink(source, destination)
    assert os.stat(destination).st_size == 64 * MiB + 5
    assert os.stat(destination).st_mode & 0o777 == 0o640
    assert allocated(destination) <= 2 * MiB
    assert sha(destination) == sha(source)


def test_clone_file_reflinks_on_xfs(random_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    clone.reset_fallback_warnings()
    with caplog.at_level(logging.WARNING, logger="lifeboat.clone"):
        assert clone.clone_file(random_file, random_file.parent / "clone") is True
    assert caplog.records == []


def test_supports_reflink(xfs_dir: Path, ext4_dir: Path) -> None:
    assert clone.supports_reflink(xfs_dir) is True
    assert clone.supports_reflink(ext4_dir) is False
    assert list(xfs_dir.iterdir()) == list(ext4_dir.iterdir()) == []  # probes removed


# --- no reflinks: ext4 ----------------------------------------------------------------


def test_reflink_fails_cleanly_without_reflinks(ext4_dir: Path) -> None:
    source = ext4_dir / "source"
    write_sparse(source, MiB, {0: b"data"})
    with pytest.raises(OSError) as raised:
        clone.reflink(source, ext4_dir / "clone")
    assert raised.value.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL)
    assert not (ext4_dir / "clone").exists()


def test_reflink_across_filesystems_fails(random_file: Path, ext4_dir: Path) -> None:
    with pytest.raises(OSError) as raised:
        clone.reflink(random_file, ext4_dir / "clone")
    assert raised.value.errno in clone.NO_REFLINK_ERRNOS


SPARSE_LAYOUTS = {
    "data-holes-data-hole": (64 * MiB, {0: os.urandom(MiB), 32 * MiB + 4096: os.urandom(MiB)}),
    "hole-first-short-tail": (10 * MiB + 77, {5 * MiB: os.urandom(12345), 10 * MiB: b"t" * 77}),
    "all-hole": (16 * MiB, {}),
    "empty": (0, {}),
    "all-data": (3 * MiB + 1, {0: os.urandom(3 * MiB + 1)}),
}


@pytest.mark.parametrize("layout", SPARSE_LAYOUTS)
def test_sparse_copy_keeps_content_and_holes(ext4_dir: Path, layout: str) -> None:
    size, pieces = SPARSE_LAYOUTS[layout]
    source = ext4_dir / "source"
    write_sparse(source, size, pieces)
    destination = ext4_dir / "copy"
    clone.sparse_copy(source, destination)
    assert os.stat(destination).st_size == size
    assert sha(destination) == sha(source)
    data = sum(len(piece) for piece in pieces.values())
    assert allocated(destination) <= data + 64 * 1024 * max(1, len(pieces))
    assert data_ranges(destination) == data_ranges(source)


def test_sparse_copy_without_copy_file_range(
    ext4_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(*args: object) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    size, pieces = SPARSE_LAYOUTS["data-holes-data-hole"]
    source = ext4_dir / "source"
    write_sparse(source, size, pieces)
    clone.sparse_copy(source, ext4_dir / "copy")
    assert sha(ext4_dir / "copy") == sha(source)
    assert allocated(ext4_dir / "copy") <= 2 * MiB + 128 * 1024


def test_sparse_copy_replaces_an_existing_file(ext4_dir: Path) -> None:
    source, destination = ext4_dir / "source", ext4_dir / "copy"
    write_sparse(source, MiB, {100: b"new"})
    write_sparse(destination, 4 * MiB, {0: b"o" * (4 * MiB)})
    clone.sparse_copy(source, destination)
    assert destination.read_bytes() == source.read_bytes()


def test_clone_file_falls_back_and_warns_once(
    ext4_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clone.reset_fallback_warnings()
    size, pieces = SPARSE_LAYOUTS["data-holes-data-hole"]
    source = ext4_dir / "source"
    write_sparse(source, size, pieces)
    with caplog.at_level(logging.WARNING, logger="lifeboat.clone"):
        assert clone.clone_file(source, ext4_dir / "first") is False
        assert clone.clone_file(source, ext4_dir / "second") is False
    assert sha(ext4_dir / "first") == sha(ext4_dir / "second") == sha(source)
    assert allocated(ext4_dir / "second") <= 2 * MiB + 128 * 1024
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == [f"filesystem of {ext4_dir} has no reflinks; revisions are full copies"]


def test_clone_file_across_filesystems_copies(
    random_file: Path, ext4_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clone.reset_fallback_warnings()
    with caplog.at_level(logging.WARNING, logger="lifeboat.clone"):
        assert clone.clone_file(random_file, ext4_dir / "copy") is False
    assert sha(ext4_dir / "copy") == sha(random_file)
    assert len(caplog.records) == 1


# --- btrfs, and the loop_mount helper itself -----------------------------------------


def mounted(path: Path) -> bool:
    return any(
        line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines()
    )


def test_reflink_on_btrfs_and_loop_mount_cleans_up(tmp_path: Path) -> None:
    need_root()
    need(shutil.which("mkfs.btrfs") is not None, "needs mkfs.btrfs (btrfs-progs)")
    with loop_mount("btrfs", 256 * MiB, tmp_path) as mount_point:
        assert mounted(mount_point)
        assert clone.supports_reflink(mount_point)
        source = mount_point / "source"
        write_sparse(source, 4 * MiB, {MiB: os.urandom(MiB)})
        assert clone.clone_file(source, mount_point / "clone") is True
        assert sha(mount_point / "clone") == sha(source)
    assert not mounted(mount_point)
    assert list(tmp_path.iterdir()) == [mount_point]  # the image file is gone


def test_loop_mount_cleans_up_after_a_failure(tmp_path: Path) -> None:
    need_root()
    with pytest.raises(RuntimeError), loop_mount("tmpfs", 16 * MiB, tmp_path) as mount_point:
        assert mounted(mount_point)
        raise RuntimeError("test failed")
    assert not mounted(mount_point)
