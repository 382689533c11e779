"""Restores to files in flight, recorded so that a restart removes what a killed one left.

A restore to a file writes a temporary file beside its target (targets.py). While it
runs, `<base-dir>/.restores/<operation>.yaml` records the target, the temporary file
and the file's device and inode; the record goes when the restore ends. At start-up
restored removes each recorded temporary file that is still the file recorded (same
name pattern, device and inode: never the target, never anything else), notes it in
the job's log and the daemon's, and drops the record.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from lifeboat.errors import LifeboatError
from lifeboat.repository import DIR_MODE, Repository, replace_file
from restored.targets import TEMPORARY_SUFFIX, TemporaryFile

log = logging.getLogger("lifeboat.restored")

DIRECTORY = ".restores"


@dataclass(frozen=True)
class InFlight:
    """One restore to a file while it runs."""

    operation: str
    job: str
    target: str
    temporary: str
    device: int
    inode: int

    @classmethod
    def of(cls, operation: str, job: str, temporary: TemporaryFile) -> InFlight:
        return cls(
            operation, job, temporary.target, temporary.path, temporary.device, temporary.inode
        )


class InFlightRestores:
    def __init__(self, repository: Repository) -> None:
        self.repository = repository
        self.directory = repository.base_dir / DIRECTORY

    def _path(self, operation: str) -> Path:
        return self.directory / f"{operation}.yaml"

    def record(self, restore: InFlight) -> None:
        """Write the record of `restore` (private, atomically, durably)."""
        self.repository.create()
        with contextlib.suppress(FileExistsError):
            self.directory.mkdir(mode=DIR_MODE)
        text = yaml.safe_dump(asdict(restore), sort_keys=False)
        replace_file(self._path(restore.operation), text.encode())

    def forget(self, operation: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(operation))

    def recover(self) -> None:
        """Remove the temporary files of restores that a restart interrupted."""
        try:
            paths = sorted(self.directory.iterdir())
        except FileNotFoundError:
            return
        for path in paths:
            if path.suffix == ".yaml":
                self._recover(path)
            path.unlink(missing_ok=True)  # records, and a record's own leftover `.tmp`

    def _recover(self, path: Path) -> None:
        restore = _load(path)
        if restore is None:
            return
        try:
            outcome = _remove_temporary(restore)
        except OSError as error:
            outcome = f"cannot remove temporary file {restore.temporary}: {error}"
        message = (
            f"restore {restore.operation} to {restore.target} interrupted by a restart: {outcome}"
        )
        log.warning("%s", message)
        try:
            self.repository.job(restore.job).append_log_if_present(message)
        except (OSError, LifeboatError) as error:
            log.warning("cannot append to the log of job %s: %s", restore.job, error)


def _load(path: Path) -> InFlight | None:
    try:
        document = yaml.safe_load(path.read_text())
        restore = InFlight(**document)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, TypeError) as error:
        log.warning("ignoring the unreadable record %s: %s", path, error)
        return None
    text = (restore.operation, restore.job, restore.target, restore.temporary)
    numbers = (restore.device, restore.inode)
    if not all(isinstance(v, str) for v in text) or not all(isinstance(v, int) for v in numbers):
        log.warning("ignoring the malformed record %s", path)
        return None
    return restore


def _remove_temporary(restore: InFlight) -> str:
    """Remove the recorded temporary file if it still is that file; says what happened."""
    directory, name = os.path.split(restore.temporary)
    if not name.endswith(TEMPORARY_SUFFIX) or restore.temporary == restore.target:
        return f"{restore.temporary} is not a restore's temporary file; left alone"
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"temporary file {restore.temporary} was already gone"
    try:
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return f"temporary file {restore.temporary} was already gone"
        if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != (
            restore.device,
            restore.inode,
        ):
            return f"{restore.temporary} is no longer the restore's temporary file; left alone"
        os.unlink(name, dir_fd=dir_fd)
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return f"removed temporary file {restore.temporary}"
