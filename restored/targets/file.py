"""A regular file target: written to a temporary name beside the target, fsynced, renamed.

Without overwrite the rename is `link` + `unlink`, which refuses to replace a file that
appeared meanwhile. The temporary file is the owner's only (0600) while it is written;
a replaced file's mode and owner are applied at the end. A failed restore removes the
temporary file, so the target is as it was: absent, or its old content.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat

from lifeboat import blockio
from lifeboat.bounds import clip
from lifeboat.errors import AlreadyExists
from restored.targets.base import TargetPolicy, TemporaryFile
from restored.targets.paths import OpenedDirectory, PathTarget, naming

TEMPORARY_SUFFIX = ".lifeboat-restore.tmp"


class FileTarget(PathTarget):
    kind = "file"

    def __init__(self, text: str, path: str, policy: TargetPolicy) -> None:
        super().__init__(text, path, policy)
        self.directory: OpenedDirectory | None = None
        self.fd = -1
        self.temporary_name = ""
        self._temporary_file: TemporaryFile | None = None
        self.size = 0
        self.replace = False
        self.mode: int | None = None
        self.holes: list[tuple[int, int]] = []

    def _is_kind(self, existing: os.stat_result | None) -> bool:
        return existing is None or stat.S_ISREG(existing.st_mode)

    def open(self, size: int, overwrite: bool) -> None:
        directory = self._open_directory(overwrite)
        try:
            self._create_temporary(directory)
        except BaseException:
            directory.close()
            raise
        self.path = os.path.join(directory.path, directory.name)
        self.directory = directory
        self.size = size

    def _create_temporary(self, directory: OpenedDirectory) -> None:
        self.temporary_name = f".{directory.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self.fd = os.open(self.temporary_name, flags, 0o600, dir_fd=directory.fd)
        info = os.fstat(self.fd)
        path = os.path.join(directory.path, self.temporary_name)
        target = os.path.join(directory.path, directory.name)
        self._temporary_file = TemporaryFile(target, path, info.st_dev, info.st_ino)
        replaced = directory.existing
        if replaced is None:
            return
        self.replace = True
        self.mode = stat.S_IMODE(replaced.st_mode)
        try:
            os.fchown(self.fd, replaced.st_uid, replaced.st_gid)
        except BaseException:
            os.close(self.fd)
            self.fd = -1
            os.unlink(self.temporary_name, dir_fd=directory.fd)
            raise

    def temporary_file(self) -> TemporaryFile | None:
        return self._temporary_file

    def write(self, offset: int, data: memoryview) -> None:
        blockio.write_all(self.fd, data, offset, self.path)

    def zero(self, offset: int, length: int) -> None:
        """Holes of a new file read as zeros already; they are punched at the end, where
        XFS may have preallocated space into them while the file grew."""
        if self.holes and self.holes[-1][1] == offset:
            offset = self.holes.pop()[0]
        self.holes.append((offset, offset + length))

    def finish(self) -> None:
        assert self.directory is not None, "open() first"
        with naming(self.path):
            self._make_durable()
        dir_fd = self.directory.fd
        if self.replace:
            os.replace(
                self.temporary_name, self.directory.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd
            )
        else:
            try:
                os.link(
                    self.temporary_name, self.directory.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd
                )
            except FileExistsError:
                self._remove_temporary()
                raise AlreadyExists(
                    f"target {clip(self.path)} appeared during the restore; not replaced"
                ) from None
            os.unlink(self.temporary_name, dir_fd=dir_fd)
        os.fsync(dir_fd)
        self.directory.close()

    def _make_durable(self) -> None:
        # Sized only now: XFS allocates appending writes in large extents and writes them
        # back fast; in a file already this long they get small ones (measured: the final
        # fsync took as long as the copy). Appending preallocates past the end, though,
        # hence the punching.
        os.ftruncate(self.fd, self.size)
        for start, end in self.holes:
            blockio.punch_hole(self.fd, start, end - start)
        if self.mode is not None:
            os.fchmod(self.fd, self.mode)
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1

    def abort(self) -> str:
        self._remove_temporary()
        return ""

    def _remove_temporary(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.directory is not None and self.directory.fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.temporary_name, dir_fd=self.directory.fd)
            self.directory.close()
