"""The clone primitive: copy-on-write file clones, with a sparse copy as fallback.

A new revision starts as a clone of its parent. On XFS (reflink=1) and btrfs that is
an `ioctl(FICLONE)` and costs no space; elsewhere it is a copy that keeps holes
(`SEEK_DATA`/`SEEK_HOLE` + `copy_file_range`), and a warning is logged once per
filesystem. Where `copy_file_range` fails, the rest is copied by reading and writing, so
an error names the file (source or copy) and the offset. Nothing here fsyncs: the caller
does once the file is complete.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from lifeboat.blockio import read_into, write_all

log = logging.getLogger(__name__)

FICLONE = 0x40049409
"""`_IOW(0x94, 9, int)`: clone all of the source file into the destination file."""

NO_REFLINK_ERRNOS = frozenset(
    {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS}
)
"""What FICLONE fails with when the filesystem (or the pair of files) cannot share extents."""

_NO_COPY_FILE_RANGE_ERRNOS = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})
_COPY_CHUNK = 8 * 1024 * 1024

_warned_devices: set[int] = set()
_warned_lock = threading.Lock()


def reflink(src: Path, dst: Path) -> None:
    """Make `dst` a copy-on-write clone of `src` (created or truncated, mode of `src`).

    Raises OSError (EOPNOTSUPP, EXDEV, EINVAL, ...) when the filesystem cannot clone;
    `dst` does not exist afterwards in that case.
    """
    src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        mode = os.fstat(src_fd).st_mode & 0o7777
        dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            fcntl.ioctl(dst_fd, FICLONE, src_fd)
        except OSError:
            os.close(dst_fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dst)
            raise
        os.close(dst_fd)
    finally:
        os.close(src_fd)


def sparse_copy(src: Path, dst: Path) -> None:
    """Copy `src` to `dst` (created or truncated, mode of `src`), leaving holes as holes."""
    src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        stat = os.fstat(src_fd)
        dst_fd = os.open(
            dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, stat.st_mode & 0o7777
        )
        try:
            for start, end in data_extents(src_fd, stat.st_size):
                _copy_range(src_fd, dst_fd, start, end, (src, dst))
            os.ftruncate(dst_fd, stat.st_size)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The `[start, end)` ranges of `fd` that may hold data, in order; holes are skipped.

    Where the filesystem cannot tell (no SEEK_DATA), the whole file is one range.
    """
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as error:
            if error.errno == errno.ENXIO:  # only a hole from `offset` to the end
                return
            if error.errno != errno.EINVAL:
                raise
            yield offset, size  # SEEK_DATA not supported here: treat as all data
            return
        if start >= size:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        offset = end


def _copy_range(src_fd: int, dst_fd: int, start: int, end: int, paths: tuple[Path, Path]) -> None:
    offset = start
    while offset < end:
        count = min(_COPY_CHUNK, end - offset)
        try:
            copied = os.copy_file_range(src_fd, dst_fd, count, offset, offset)
        except OSError as error:
            if error.errno not in _NO_COPY_FILE_RANGE_ERRNOS:
                # It tells neither where nor whether reading or writing failed: copying the
                # rest again by reading and writing fails with both named (or succeeds).
                log.warning("copy_file_range %s -> %s failed: %s", *paths, error.strerror)
            _read_write_range(src_fd, dst_fd, offset, end, paths)
            return
        if copied == 0:  # the source shrank under us
            return
        offset += copied


def _read_write_range(
    src_fd: int, dst_fd: int, start: int, end: int, paths: tuple[Path, Path]
) -> None:
    buffer = memoryview(bytearray(min(_COPY_CHUNK, end - start)))
    offset = start
    while offset < end:
        count = read_into(src_fd, buffer[: min(len(buffer), end - offset)], offset, paths[0])
        if count == 0:  # the source shrank under us
            return
        write_all(dst_fd, buffer[:count], offset, paths[1])
        offset += count


def clone_file(src: Path, dst: Path) -> bool:
    """Clone `src` to `dst`: a reflink where possible (True), else a sparse copy (False).

    The first fallback on a filesystem logs one warning; later ones are silent.
    """
    try:
        reflink(src, dst)
    except OSError as error:
        if error.errno not in NO_REFLINK_ERRNOS:
            raise
        _warn_once(dst.parent)
        sparse_copy(src, dst)
        return False
    return True


def _warn_once(directory: Path) -> None:
    device = os.stat(directory).st_dev
    with _warned_lock:
        if device in _warned_devices:
            return
        _warned_devices.add(device)
    log.warning("filesystem of %s has no reflinks; revisions are full copies", directory)


def reset_fallback_warnings() -> None:
    """Forget which filesystems were warned about (for tests)."""
    with _warned_lock:
        _warned_devices.clear()


def supports_reflink(directory: Path) -> bool:
    """Whether files in `directory` can be cloned, probed with two temporary files.

    The probe files are named `.reflink-probe-*.tmp`, so a crash leaves only files
    that repository recovery removes.
    """
    src_fd, src_name = tempfile.mkstemp(prefix=".reflink-probe-", suffix=".tmp", dir=directory)
    dst_fd, dst_name = tempfile.mkstemp(prefix=".reflink-probe-", suffix=".tmp", dir=directory)
    try:
        os.write(src_fd, b"lifeboat reflink probe\n" * 178)  # a little over one 4 KiB block
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as error:
        if error.errno not in NO_REFLINK_ERRNOS:
            raise
        return False
    finally:
        for fd, name in ((src_fd, src_name), (dst_fd, dst_name)):
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
    return True


# XFS allocates copy-on-write staging extents of `cowextsize` (default 32 blocks) for
# every write into a shared extent; the unused rest lingers until background reclaim.
# Scattered small changes to a reflinked revision would each pin 128 KiB, so new images
# get a hint equal to the block size Lifeboat writes in.
_FS_IOC_FSGETXATTR = 0x801C581F
_FS_IOC_FSSETXATTR = 0x401C5820
_FS_XFLAG_COWEXTSIZE = 0x00010000
_FSXATTR = struct.Struct("=IIIII8x")


def limit_cow_preallocation(fd: int, size: int) -> bool:
    """Set the copy-on-write extent size hint of an open file; False where unsupported."""
    buffer = bytearray(_FSXATTR.size)
    try:
        fcntl.ioctl(fd, _FS_IOC_FSGETXATTR, buffer)
        xflags, extsize, nextents, projid, _ = _FSXATTR.unpack(buffer)
        hint = _FSXATTR.pack(xflags | _FS_XFLAG_COWEXTSIZE, extsize, nextents, projid, size)
        fcntl.ioctl(fd, _FS_IOC_FSSETXATTR, hint)
    except OSError:
        return False
    return True
