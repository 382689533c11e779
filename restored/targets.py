"""Restore targets: which are allowed, and writing to files and block devices.

A target is an absolute path (a regular file or a block device) or `rbd:POOL/IMAGE`.
It must lie under one of the host's `restore-targets` (absolute path prefixes, whole
path components, or `rbd:POOL`) and never inside the repository. Paths are resolved
(symlinks, `..`) before they are checked, and the target's directory is opened and
checked again through its descriptor, so a directory swapped for a symlink after the
check cannot redirect the write. Nothing is created before every check has passed.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import os
import re
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lifeboat.blockio import punch_hole
from lifeboat.bounds import clip
from lifeboat.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LifeboatError,
    NotFound,
    PermissionDenied,
)

RBD_PREFIX = "rbd:"
_RBD_TARGET = re.compile(r"rbd:([A-Za-z0-9_.-]+)/([A-Za-z0-9_.+-]+)")
TEMPORARY_SUFFIX = ".lifeboat-restore.tmp"


@dataclass(frozen=True)
class TargetPolicy:
    """Where restores of one host may write."""

    host: str
    allowed: tuple[str, ...]
    base_dir: Path


@dataclass(frozen=True)
class PathTarget:
    """A file or block device; `path` is the resolved absolute path."""

    text: str
    path: str

    @property
    def key(self) -> str:
        return self.path


@dataclass(frozen=True)
class RbdTarget:
    text: str
    pool: str
    image: str

    @property
    def key(self) -> str:
        return f"{RBD_PREFIX}{self.pool}/{self.image}"


Target = PathTarget | RbdTarget


def _within(path: str, prefix: str) -> bool:
    """Whether `path` is `prefix` or lies below it (whole components, both resolved)."""
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _path_allowed(path: str, policy: TargetPolicy) -> None:
    repository = os.path.realpath(policy.base_dir)
    if _within(path, repository) or _within(repository, path):
        raise PermissionDenied(
            f"target {clip(path)} overlaps the repository {repository} of host {policy.host}"
        )
    prefixes = [p for p in policy.allowed if not p.startswith(RBD_PREFIX)]
    if not any(_within(path, os.path.realpath(prefix)) for prefix in prefixes):
        raise PermissionDenied(
            f"target {clip(path)} is not under the restore-targets of host {policy.host} "
            f"({describe_allowed(policy.allowed)})"
        )


def resolve_target(text: str, policy: TargetPolicy) -> Target:
    """The target `text` names, if the policy allows it (PermissionDenied otherwise)."""
    if not text:
        raise InvalidArgument("target", "required: an absolute path or rbd:POOL/IMAGE")
    if text.startswith(RBD_PREFIX):
        match = _RBD_TARGET.fullmatch(text)
        if match is None:
            raise InvalidArgument("target", f"expected rbd:POOL/IMAGE, got {clip(text)}")
        target = RbdTarget(text, match[1], match[2])
        if f"{RBD_PREFIX}{target.pool}" not in policy.allowed:
            raise PermissionDenied(
                f"target {clip(text)}: pool {clip(target.pool)} is not in the restore-targets "
                f"of host {policy.host} ({describe_allowed(policy.allowed)})"
            )
        return target
    if not os.path.isabs(text) or "\0" in text:
        raise InvalidArgument(
            "target", f"expected an absolute path or rbd:POOL/IMAGE: {clip(text)}"
        )
    resolved = os.path.realpath(text)
    if resolved == "/":
        raise InvalidArgument("target", f"{clip(text)} is not a file or block device")
    _path_allowed(resolved, policy)
    return PathTarget(text, resolved)


# --- writing ----------------------------------------------------------------------------


class TargetWriter(abc.ABC):
    """Receives a revision's bytes in order, then `finish` makes them durable (and visible)."""

    description: str

    @abc.abstractmethod
    def write(self, offset: int, data: memoryview) -> None: ...

    @abc.abstractmethod
    def zero(self, offset: int, length: int) -> None:
        """[offset, offset+length) is a hole (or zero blocks) of the revision: make it read
        as zeros by the end, using no space where the target can."""

    @abc.abstractmethod
    def finish(self) -> None:
        """Flush everything to stable storage and put the result in place."""

    @abc.abstractmethod
    def abort(self) -> str:
        """Undo what can be undone; returns what is left behind ("" for nothing)."""


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


class FileWriter(TargetWriter):
    """A new regular file: written to a temporary name beside the target, fsynced, renamed.

    Without overwrite the rename is `link` + `unlink`, which refuses to replace a file
    that appeared meanwhile. The temporary file is the owner's only (0600) while it is
    written; a replaced file's mode is applied at the end.
    """

    def __init__(
        self, dir_fd: int, directory: str, name: str, size: int, replaced: os.stat_result | None
    ) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.replace = replaced is not None
        self.description = os.path.join(directory, name)
        self.temporary = f".{name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"
        self.temporary_path = os.path.join(directory, self.temporary)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self.fd = os.open(self.temporary, flags, 0o600, dir_fd=dir_fd)
        info = os.fstat(self.fd)
        self.temporary_identity = (info.st_dev, info.st_ino)
        self.size = size
        self.holes: list[tuple[int, int]] = []
        self.mode = stat.S_IMODE(replaced.st_mode) if replaced is not None else None
        try:
            if replaced is not None:
                os.fchown(self.fd, replaced.st_uid, replaced.st_gid)
        except BaseException:
            self._remove_temporary()
            raise

    def write(self, offset: int, data: memoryview) -> None:
        _write_all(self.fd, data, offset)

    def zero(self, offset: int, length: int) -> None:
        """Holes of a new file read as zeros already; they are punched at the end, where
        XFS may have preallocated space into them while the file grew."""
        if self.holes and self.holes[-1][1] == offset:
            offset = self.holes.pop()[0]
        self.holes.append((offset, offset + length))

    def finish(self) -> None:
        # Sized only now: XFS allocates appending writes in large extents and writes them
        # back fast; in a file already this long they get small ones (measured: the final
        # fsync took as long as the copy). Appending preallocates past the end, though,
        # hence the punching.
        os.ftruncate(self.fd, self.size)
        for start, end in self.holes:
            punch_hole(self.fd, start, end - start)
        if self.mode is not None:
            os.fchmod(self.fd, self.mode)
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        if self.replace:
            os.replace(self.temporary, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        else:
            try:
                os.link(self.temporary, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            except FileExistsError:
                self._remove_temporary()
                raise AlreadyExists(
                    f"target {clip(self.description)} appeared during the restore; not replaced"
                ) from None
            os.unlink(self.temporary, dir_fd=self.dir_fd)
        os.fsync(self.dir_fd)
        os.close(self.dir_fd)
        self.dir_fd = -1

    def abort(self) -> str:
        self._remove_temporary()
        return ""

    def _remove_temporary(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.dir_fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.temporary, dir_fd=self.dir_fd)
            os.close(self.dir_fd)
            self.dir_fd = -1


class BlockDeviceWriter(TargetWriter):
    """A block device, opened exclusively (a mounted or otherwise claimed device is refused).

    Written in place: holes of the revision are zeroed on the device.
    """

    def __init__(self, dir_fd: int, directory: str, name: str, size: int) -> None:
        self.description = os.path.join(directory, name)
        flags = os.O_WRONLY | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self.fd = os.open(name, flags, dir_fd=dir_fd)
        except OSError as error:
            if error.errno == errno.EBUSY:
                raise FailedPrecondition(
                    f"block device {clip(self.description)} is in use (mounted or claimed)"
                ) from None
            raise
        finally:
            os.close(dir_fd)
        device_size = os.lseek(self.fd, 0, os.SEEK_END)
        if device_size < size:
            os.close(self.fd)
            raise FailedPrecondition(
                f"block device {clip(self.description)} holds {device_size} bytes, "
                f"the revision {size}"
            )

    def write(self, offset: int, data: memoryview) -> None:
        _write_all(self.fd, data, offset)

    def zero(self, offset: int, length: int) -> None:
        punch_hole(self.fd, offset, length)

    def finish(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1

    def abort(self) -> str:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        return f"block device {self.description} is partially overwritten"


def _open_directory(directory: str) -> int:
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"target directory {clip(directory)} does not exist") from None
    except NotADirectoryError:
        raise InvalidArgument("target", f"{clip(directory)} is not a directory") from None


def open_path_writer(
    target: PathTarget, size: int, overwrite: bool, policy: TargetPolicy
) -> TargetWriter:
    """Open the writer for a file or block device target (after `resolve_target`)."""
    directory, name = os.path.split(target.path)
    dir_fd = _open_directory(directory)
    try:
        # The directory as opened, not as named: catches a swap after resolve_target.
        opened = os.readlink(f"/proc/self/fd/{dir_fd}")
        _path_allowed(os.path.join(opened, name), policy)
        existing = _lstat(dir_fd, name)
    except BaseException:
        os.close(dir_fd)
        raise
    if existing is None:
        return FileWriter(dir_fd, opened, name, size, None)
    mode = existing.st_mode
    problem: LifeboatError | None = None
    if stat.S_ISLNK(mode):
        problem = PermissionDenied(f"target {clip(target.text)} became a symlink; refused")
    elif not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        problem = InvalidArgument(
            "target", f"{clip(target.path)} is not a regular file or block device"
        )
    elif not overwrite:
        kind = "block device" if stat.S_ISBLK(mode) else "file"
        problem = AlreadyExists(
            f"target {clip(target.path)} exists ({kind}); ask for overwrite to replace it"
        )
    if problem is not None:
        os.close(dir_fd)
        raise problem
    if stat.S_ISBLK(mode):
        return BlockDeviceWriter(dir_fd, opened, name, size)
    return FileWriter(dir_fd, opened, name, size, existing)


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def describe_allowed(allowed: Sequence[str]) -> str:
    return ", ".join(allowed) or "none configured"
