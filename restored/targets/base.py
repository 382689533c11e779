"""The restore-target interface: what a restore needs from wherever the image goes.

Every target (a file, a block device, an RBD image) keeps one contract:

- `open` checks everything before anything is written: the target lies under the host's
  `restore-targets` (checked again where the target can be swapped meanwhile), an
  existing target is refused without overwrite (AlreadyExists), it can hold the
  revision's size. When `open` raises, nothing was created or changed.
- `write` puts data at an offset; `zero` makes a range read as zeros (a hole of the
  revision), using no space where the target can. An I/O error raises OSError naming
  the target and the offset.
- `finish` makes the result durable and puts it in place: fsync and an atomic rename
  for files, a flush for block devices and RBD images.
- `abort` leaves no partial output where the target can promise that: a file's
  temporary file is removed (a replaced file keeps its old content), an RBD image
  this restore created is removed. What it cannot undo (a block device, an existing
  RBD image, partially overwritten) it says in its return value.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TargetPolicy:
    """Where restores of one host may write."""

    host: str
    allowed: tuple[str, ...]
    base_dir: Path


@dataclass(frozen=True)
class TemporaryFile:
    """The file a restore writes before it is renamed to `target`, and its identity, so
    that a restart removes it and nothing else (inflight.py)."""

    target: str
    path: str
    device: int
    inode: int


class RestoreTarget(abc.ABC):
    """Where one restore writes, from its checks until the result is in place (or not)."""

    kind: str
    """What the target is, in words: "file", "block device", "RBD image"."""
    text: str
    """The target as asked for."""
    key: str
    """The same for every name of the target (resolved): one restore per key at a time."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A short text for logs, e.g. "file /srv/restore/vm.raw"."""

    @abc.abstractmethod
    def open(self, size: int, overwrite: bool) -> None:
        """Check the target for a revision of `size` bytes and make it ready to write."""

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

    def temporary_file(self) -> TemporaryFile | None:
        """The temporary file that `finish` renames, for targets written through one."""
        return None


def describe_allowed(allowed: Sequence[str]) -> str:
    return ", ".join(allowed) or "none configured"
