"""Path targets (files and block devices): which paths are allowed, and what both kinds
share (PathTarget): opening the target's directory so that the check holds for what is
written, and refusing what is there.

Paths are resolved (symlinks, `..`) before they are checked, and the target's directory
is opened and checked again through its descriptor, so a directory swapped for a
symlink after the check cannot redirect the write.
"""

from __future__ import annotations

import abc
import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from lifeboat import blockio
from lifeboat.bounds import clip
from lifeboat.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from restored.targets.base import RestoreTarget, TargetPolicy, describe_allowed

RBD_PREFIX = "rbd:"


def within(path: str, prefix: str) -> bool:
    """Whether `path` is `prefix` or lies below it (whole components, both resolved)."""
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def check_allowed(path: str, policy: TargetPolicy) -> None:
    """PermissionDenied unless the resolved `path` lies under a path of `restore-targets`
    and neither inside nor around the repository."""
    repository = os.path.realpath(policy.base_dir)
    if within(path, repository) or within(repository, path):
        raise PermissionDenied(
            f"target {clip(path)} overlaps the repository {repository} of host {policy.host}"
        )
    prefixes = [p for p in policy.allowed if not p.startswith(RBD_PREFIX)]
    if not any(within(path, os.path.realpath(prefix)) for prefix in prefixes):
        raise PermissionDenied(
            f"target {clip(path)} is not under the restore-targets of host {policy.host} "
            f"({describe_allowed(policy.allowed)})"
        )


@dataclass
class OpenedDirectory:
    """A target's directory, opened and checked: `path` is the directory as opened."""

    fd: int
    path: str
    name: str
    existing: os.stat_result | None
    """The target's entry in it (not followed), None if there is none."""

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_directory(path: str, policy: TargetPolicy) -> OpenedDirectory:
    """Open the directory of the resolved target `path` and check the target again, as
    reached through the open directory (catches a swap after the first check)."""
    directory, name = os.path.split(path)
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"target directory {clip(directory)} does not exist") from None
    except NotADirectoryError:
        raise InvalidArgument("target", f"{clip(directory)} is not a directory") from None
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")
        check_allowed(os.path.join(opened, name), policy)
        try:
            existing: os.stat_result | None = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
    except BaseException:
        os.close(fd)
        raise
    return OpenedDirectory(fd, opened, name, existing)


def _refuse_existing(text: str, path: str, existing: os.stat_result, overwrite: bool) -> None:
    """Refuse an existing target that is not a file or block device, or without overwrite."""
    mode = existing.st_mode
    if stat.S_ISLNK(mode):
        raise PermissionDenied(f"target {clip(text)} became a symlink; refused")
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise InvalidArgument("target", f"{clip(path)} is not a regular file or block device")
    if not overwrite:
        kind = "block device" if stat.S_ISBLK(mode) else "file"
        raise AlreadyExists(f"target {clip(path)} exists ({kind}); ask for overwrite to replace it")


class PathTarget(RestoreTarget):
    """A file or block device; `path` is the resolved absolute path."""

    def __init__(self, text: str, path: str, policy: TargetPolicy) -> None:
        self.text = text
        self.path = path
        self.key = path
        self.policy = policy

    def describe(self) -> str:
        return f"{self.kind} {self.path}"

    @abc.abstractmethod
    def _is_kind(self, existing: os.stat_result | None) -> bool:
        """Whether what is at the path now (None: nothing) is a target of this kind."""

    def _open_directory(self, overwrite: bool) -> OpenedDirectory:
        """The target's directory, opened and checked; refuses an existing target
        without overwrite, and one that is not of this kind (any more)."""
        directory = open_directory(self.path, self.policy)
        try:
            if directory.existing is not None:
                _refuse_existing(self.text, self.path, directory.existing, overwrite)
            if not self._is_kind(directory.existing):
                raise FailedPrecondition(
                    f"target {clip(self.path)} is not a {self.kind} any more; try again"
                )
        except BaseException:
            directory.close()
            raise
        return directory


@contextlib.contextmanager
def naming(path: str) -> Iterator[None]:
    """OSError raised inside names `path` unless it names a file already."""
    try:
        yield
    except OSError as error:
        named = blockio.naming(error, path)
        if named is error:
            raise
        raise named from error
