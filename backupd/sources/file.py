"""The file source: a raw image file or a block device on the backup host.

There is no snapshot: the file is read as it is (a freeze hook keeps it
quiet). Changes are found by comparing every block with the parent's
manifest, so `changed_extents` is None.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from backupd.extents import Extent
from backupd.sources.base import Snapshot, SourceDriver, SourceError, read_ahead
from lifeboat import blockio, clone
from lifeboat.model import FileSource


def _size_of(fd: int) -> int:
    info = os.fstat(fd)
    if stat.S_ISBLK(info.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    if not stat.S_ISREG(info.st_mode):
        raise SourceError("source is neither a regular file nor a block device")
    return info.st_size


class FileSnapshot(Snapshot):
    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.size = _size_of(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def read_into(self, offset: int, buffer: memoryview) -> None:
        try:
            done = blockio.read_into(self.fd, buffer, offset)
        except OSError as error:  # its text names the offset
            raise SourceError(f"{self.path}: cannot read source: {error.strerror}") from error
        if done < len(buffer):
            raise SourceError(
                f"{self.path}: source shrank during the backup "
                f"(read ended at {offset + done}, expected {self.size} bytes)"
            )

    def read_many(self, pieces: Iterable[Extent]) -> Iterator[tuple[int, memoryview]]:
        """Read ahead in a thread, so reading overlaps the digesting and writing of the caller."""
        return read_ahead(self.read_into, pieces)

    def data_extents(self, start: int, end: int) -> Iterator[Extent]:
        for data_start, data_end in clone.data_extents(self.fd, self.size):
            lo, hi = max(data_start, start), min(data_end, end)
            if hi > lo:
                yield (lo, hi - lo)

    def changed_extents(self) -> list[Extent] | None:
        return None

    def check_unchanged_size(self) -> None:
        size = _size_of(self.fd)
        if size != self.size:
            raise SourceError(f"{self.path}: source size changed from {self.size} to {size} bytes")


class FileDriver(SourceDriver):
    kind = "file"

    def __init__(self, source: FileSource) -> None:
        self.source = source

    def describe(self) -> str:
        return f"file {self.source.path}"

    @contextmanager
    def snapshot(self, revision_id: str, parent_id: str | None) -> Iterator[Snapshot]:
        try:
            fd = os.open(self.source.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            raise SourceError(f"{self.source.path}: cannot open source: {error.strerror}") from None
        try:
            snapshot = FileSnapshot(self.source.path, fd)
            yield snapshot
            snapshot.check_unchanged_size()
        finally:
            os.close(fd)
