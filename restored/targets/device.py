"""A block device target, opened exclusively (a mounted or otherwise claimed device is
refused) and written in place: holes of the revision are zeroed on the device, bytes
past the revision's size are left alone. It always exists, so it is written only with
overwrite, and a failed restore leaves it partially overwritten."""

from __future__ import annotations

import errno
import os
import stat

from lifeboat import blockio
from lifeboat.bounds import clip
from lifeboat.errors import FailedPrecondition
from restored.targets.base import TargetPolicy
from restored.targets.paths import PathTarget, naming


class BlockDeviceTarget(PathTarget):
    kind = "block device"

    def __init__(self, text: str, path: str, policy: TargetPolicy) -> None:
        super().__init__(text, path, policy)
        self.fd = -1

    def _is_kind(self, existing: os.stat_result | None) -> bool:
        return existing is not None and stat.S_ISBLK(existing.st_mode)

    def open(self, size: int, overwrite: bool) -> None:
        directory = self._open_directory(overwrite)
        flags = os.O_WRONLY | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self.fd = os.open(directory.name, flags, dir_fd=directory.fd)
        except OSError as error:
            if error.errno == errno.EBUSY:
                raise FailedPrecondition(
                    f"block device {clip(self.path)} is in use (mounted or claimed)"
                ) from None
            raise
        finally:
            directory.close()
        device_size = os.lseek(self.fd, 0, os.SEEK_END)
        if device_size < size:
            os.close(self.fd)
            self.fd = -1
            raise FailedPrecondition(
                f"block device {clip(self.path)} holds {device_size} bytes, the revision {size}"
            )

    def write(self, offset: int, data: memoryview) -> None:
        blockio.write_all(self.fd, data, offset, self.path)

    def zero(self, offset: int, length: int) -> None:
        with naming(self.path):
            blockio.punch_hole(self.fd, offset, length)

    def finish(self) -> None:
        with naming(self.path):
            os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1

    def abort(self) -> str:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        return f"block device {self.path} is partially overwritten"
