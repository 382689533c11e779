"""The repository on disk: job directories, revisions and the commit protocol.

This module implements "On-disk format (the repository)" of ARCHITECTURE.md. Every
change to a job directory happens under its `.lock` (the `lock()` context manager of
one `JobDirectory` object); readers need no lock and only ever see revisions with a
`.rev` file. Revision ids sort by age, so "newest" means "greatest id" throughout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import logging
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from lifeboat import clock
from lifeboat.bounds import clip
from lifeboat.clone import clone_file
from lifeboat.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from lifeboat.manifest import ALGORITHM, DEFAULT_BLOCK_SIZE, Manifest

log = logging.getLogger(__name__)

JOB_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
REVISION_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{4}")
_REVISION_FILE = re.compile(r"\.?(\d{8}T\d{6}Z-[0-9a-f]{4})(?:\.sums|\.rev)?(?:\.tmp)?")
_ID_TIME_FORMAT = "%Y%m%dT%H%M%SZ"

TRUSTED = "trusted"
DISTRUSTED = "distrusted"
STEPS = ("fsync-data", "rename-data", "write-rev", "fsync-dir", "update-last", "done")
"""The names `RevisionWriter.commit` passes to `on_step`, each just before that step."""

LAST = "last"
LAST_REV = "last.rev"
# Images hold whole disks: only the owner (the daemons' user) may read anything here.
DIR_MODE = 0o700
FILE_MODE = 0o600
LOCK_FILE = ".lock"
JOB_FILE = "job.yaml"
LOG_FILE = "log"


def validate_job_name(name: str) -> str:
    """`name` if it can be a job directory: 1-64 of [A-Za-z0-9._-], not starting with . or -."""
    if not isinstance(name, str) or not JOB_NAME.fullmatch(name):
        raise InvalidArgument(
            "job",
            f"{clip(name)} is not a job name (1-64 letters, digits, '.', '_', '-'; "
            "not starting with '.' or '-')",
        )
    return name


def validate_revision_id(revision_id: str) -> str:
    if not isinstance(revision_id, str) or not REVISION_ID.fullmatch(revision_id):
        raise InvalidArgument(
            "revision", f"{clip(revision_id)} is not a revision id (YYYYMMDDTHHMMSSZ-xxxx)"
        )
    return revision_id


# --- metadata -------------------------------------------------------------------------


@dataclasses.dataclass
class RevisionMeta:
    """The contents of `<revision-id>.rev`."""

    id: str
    job: str
    timestamp: dt.datetime
    parent: str | None = None
    tags: list[str] = dataclasses.field(default_factory=list)
    size: int = 0
    block_size: int = DEFAULT_BLOCK_SIZE
    checksum: str = ALGORITHM
    trust: str = TRUSTED
    source: dict[str, Any] = dataclasses.field(default_factory=dict)
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    verification: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def good(self) -> bool:
        """Complete (it has a `.rev`) and not distrusted."""
        return self.trust == TRUSTED

    def to_yaml(self) -> str:
        document = {
            "id": self.id,
            "job": self.job,
            "timestamp": _utc(self.timestamp),
            "parent": self.parent,
            "tags": list(self.tags),
            "size": self.size,
            "block-size": self.block_size,
            "checksum": self.checksum,
            "trust": self.trust,
            "source": dict(self.source),
            "stats": dict(self.stats),
            "verification": dict(self.verification),
        }
        return yaml.dump(
            document, Dumper=_MetaDumper, sort_keys=False, default_flow_style=None, width=1000
        )

    @classmethod
    def from_yaml(cls, text: str) -> RevisionMeta:
        """Parse `.rev` text; DataLoss if it is not valid revision metadata."""
        try:
            document = yaml.load(text, Loader=_SafeLoader)
        except yaml.YAMLError as error:
            raise DataLoss(f"revision metadata is not YAML: {error}") from error
        if not isinstance(document, dict):
            raise DataLoss("revision metadata is not a mapping")
        return cls(
            id=_field(document, "id", str),
            job=_field(document, "job", str),
            timestamp=_timestamp(document.get("timestamp")),
            parent=_field(document, "parent", str, optional=True),
            tags=_tags(document.get("tags")),
            size=_field(document, "size", int),
            block_size=_field(document, "block-size", int),
            checksum=_field(document, "checksum", str),
            trust=_trust(document.get("trust")),
            source=_field(document, "source", dict, optional=True) or {},
            stats=_field(document, "stats", dict, optional=True) or {},
            verification=_field(document, "verification", dict, optional=True) or {},
        )


# libyaml's parser and emitter where PyYAML was built with them: a `.rev` with a long
# verification record takes milliseconds in pure Python, and every backup reads its parent's.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _MetaDumper(_SafeDumper):  # type: ignore[misc,valid-type]
    """SafeDumper that writes timestamps as ISO 8601 with a `T`, as in ARCHITECTURE.md."""


def _represent_datetime(dumper: yaml.SafeDumper, value: dt.datetime) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:timestamp", value.isoformat())


_MetaDumper.add_representer(dt.datetime, _represent_datetime)


def _utc(timestamp: dt.datetime) -> dt.datetime:
    if timestamp.tzinfo is None:
        return timestamp.replace(tzinfo=dt.UTC)
    return timestamp.astimezone(dt.UTC)


def _field(document: dict[str, Any], key: str, kind: type, optional: bool = False) -> Any:
    value = document.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DataLoss(f"revision metadata: {key!r} must be {kind.__name__}, not {value!r}")
    return value


def _timestamp(value: object) -> dt.datetime:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        raise DataLoss(f"revision metadata: 'timestamp' is not a time: {value!r}")
    return _utc(value)


def _tags(value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise DataLoss(f"revision metadata: 'tags' must be a list of strings, not {value!r}")
    return value


def _trust(value: object) -> str:
    if value not in (TRUSTED, DISTRUSTED):
        raise DataLoss(f"revision metadata: 'trust' must be trusted or distrusted: {value!r}")
    return str(value)


# --- small file-system helpers --------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Create or truncate `path`, write `data` and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_private(path: Path) -> bool:
    """Take group and other permissions off `path` (never through a symlink); True if it
    had any."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(mode) or not mode & 0o077:
        return False
    os.chmod(path, stat.S_IMODE(mode) & ~0o077)
    return True


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_symlink(directory: Path, name: str, target: str) -> None:
    temporary = directory / f".{name}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)
    os.symlink(target, temporary)
    os.replace(temporary, directory / name)


def _unlink(path: Path) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:  # missing, or not a symlink
        return None


@contextlib.contextmanager
def _space_errors() -> Iterator[None]:
    """Report a full filesystem as ResourceExhausted."""
    try:
        yield
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceExhausted(f"no space left: {error}") from error
        raise


def committed_id(name: str) -> str | None:
    """The revision id that a job directory's entry `name` commits (`<id>.rev`), if any."""
    stem = name.removesuffix(".rev")
    return stem if stem != name and REVISION_ID.fullmatch(stem) else None


def _is_leftover(name: str, committed: set[str]) -> bool:
    """A file that recovery removes: a `.*.tmp` file, or an image/manifest without `.rev`."""
    if name.startswith(".") and name.endswith(".tmp"):
        return True
    stem = name.removesuffix(".sums")
    return bool(REVISION_ID.fullmatch(stem)) and stem not in committed


# --- the repository -------------------------------------------------------------------


class Repository:
    """The repository at `base_dir` (`global.base-dir`): one directory per job."""

    def __init__(self, base_dir: Path | str) -> None:
        self.base_dir = Path(base_dir)

    def job(self, name: str) -> JobDirectory:
        return JobDirectory(self.base_dir, validate_job_name(name))

    def create(self) -> None:
        """Create base-dir (mode 0700; missing parents as usual) unless it exists."""
        self.base_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)

    def make_private(self) -> int:
        """Take group and other permissions off base-dir and the files directly in it
        (job directories: `JobDirectory.make_private`); returns how many had them."""
        files = [
            Path(e.path) for e in os.scandir(self.base_dir) if e.is_file(follow_symlinks=False)
        ]
        return sum(_make_private(path) for path in [self.base_dir, *files])

    def job_names(self) -> list[str]:
        """The jobs that have a directory here, sorted."""
        try:
            entries = list(os.scandir(self.base_dir))
        except FileNotFoundError:
            return []
        return sorted(
            entry.name
            for entry in entries
            if JOB_NAME.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)
        )


class JobDirectory:
    """One job's directory: its revisions, symlinks, log and lock."""

    def __init__(self, base_dir: Path, name: str) -> None:
        self.name = validate_job_name(name)
        self.path = Path(base_dir) / name
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"JobDirectory({str(self.path)!r})"

    # paths

    def image_path(self, revision_id: str) -> Path:
        return self.path / validate_revision_id(revision_id)

    def sums_path(self, revision_id: str) -> Path:
        return self.path / f"{validate_revision_id(revision_id)}.sums"

    def rev_path(self, revision_id: str) -> Path:
        return self.path / f"{validate_revision_id(revision_id)}.rev"

    def exists(self) -> bool:
        return self.path.is_dir()

    # reading (no lock needed)

    def revisions(self) -> list[RevisionMeta]:
        """The committed revisions (those with a `.rev`), oldest first."""
        listed = (self.listed_revision(revision_id) for revision_id in self._committed_ids())
        return [meta for meta in listed if meta is not None]

    def listed_revision(self, revision_id: str) -> RevisionMeta | None:
        """What `revisions()` lists for the committed id `revision_id`: its metadata, or
        None when it was deleted since the directory was listed."""
        try:
            return self._read_meta(revision_id)
        except NotFound:
            return None

    def revision(self, revision_id: str) -> RevisionMeta:
        """The committed revision `revision_id`, or the one `last` points at for "last"."""
        if revision_id == LAST:
            newest = self._last_target() or self._newest_committed_id()
            if newest is None:
                raise NotFound(f"job {self.name} has no revisions")
            revision_id = newest
        return self._read_meta(validate_revision_id(revision_id))

    def last(self) -> RevisionMeta | None:
        """The revision `last` points at (the newest), or None if there is none."""
        try:
            return self.revision(LAST)
        except NotFound:
            return None

    def read_job_file(self) -> dict[str, Any] | None:
        try:
            text = (self.path / JOB_FILE).read_text()
        except FileNotFoundError:
            return None
        data = yaml.safe_load(text)
        return data if isinstance(data, dict) else None

    # the lock

    @contextlib.contextmanager
    def lock(self, blocking: bool = True) -> Iterator[None]:
        """Hold the job's `.lock` (flock). Non-blocking failure: FailedPrecondition."""
        if self._lock_fd is not None:
            raise FailedPrecondition(f"job {self.name}: the lock is already held by this writer")
        self._ensure_dir()
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise FailedPrecondition(f"job {self.name} is locked by another writer") from None
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd
        try:
            yield
        finally:
            self._lock_fd = None
            os.close(fd)  # releases the flock

    @property
    def locked(self) -> bool:
        """Whether this object holds the job's lock."""
        return self._lock_fd is not None

    # writing (under the lock)

    def recover(self) -> list[str]:
        """Remove what an interrupted writer left behind and re-point a stale `last`.

        Removes `.*.tmp` files and images or manifests without a `.rev`; returns the
        names removed.
        """
        self._require_lock("recover")
        committed = set(self._committed_ids())
        removed = [
            entry.name
            for entry in sorted(os.scandir(self.path), key=lambda entry: entry.name)
            if not entry.is_dir(follow_symlinks=False) and _is_leftover(entry.name, committed)
        ]
        for name in removed:
            _unlink(self.path / name)
        if removed:
            _fsync_dir(self.path)
            log.info("job %s: removed leftovers %s", self.name, ", ".join(removed))
        if not self._last_is_current():
            log.info("job %s: re-pointing last at %s", self.name, self._newest_committed_id())
            self._point_last()
        return removed

    def make_private(self) -> int:
        """Take group and other permissions off the directory and its files (a repository
        written before they were private); returns how many had them."""
        entries = [Path(e.path) for e in os.scandir(self.path) if not e.is_symlink()]
        return sum(_make_private(path) for path in [self.path, *entries])

    def new_revision_id(self) -> str:
        """A fresh id from `clock.now()`, unique here and sorting after every id of the
        same second already in the directory."""
        prefix = clock.now().astimezone(dt.UTC).strftime(_ID_TIME_FORMAT)
        taken = [int(i[-4:], 16) for i in self._all_ids() if i.startswith(prefix)]
        floor = max(taken, default=-1) + 1
        if floor > 0xFFFF:
            raise ResourceExhausted(f"job {self.name}: no revision ids left for {prefix}")
        return f"{prefix}-{_random_suffix(floor):04x}"

    def begin(self, revision_id: str) -> RevisionWriter:
        """Start writing revision `revision_id` (needs the lock; the id must be new)."""
        self._require_lock("begin")
        validate_revision_id(revision_id)
        if revision_id in self._all_ids():
            raise AlreadyExists(f"job {self.name}: revision {revision_id} already exists")
        return RevisionWriter(self, revision_id)

    def update(self, meta: RevisionMeta) -> None:
        """Rewrite the `.rev` of a committed revision atomically (tags, trust, verification)."""
        self._require_lock("update")
        self._check_belongs(meta)
        if not self.rev_path(meta.id).exists():
            raise NotFound(f"job {self.name}: no revision {meta.id}")
        with _space_errors():
            self._write_rev(meta)
            _fsync_dir(self.path)

    def delete(self, revision_id: str) -> None:
        """Uncommit (remove `.rev`), then remove the image and manifest; re-point `last`."""
        self._require_lock("delete")
        if not _unlink(self.rev_path(revision_id)):
            raise NotFound(f"job {self.name}: no revision {revision_id}")
        _fsync_dir(self.path)
        _unlink(self.image_path(revision_id))
        _unlink(self.sums_path(revision_id))
        self._point_last()

    def append_log(self, message: str) -> None:
        """Append `ISO-timestamp message` as one line to the job's log."""
        self._ensure_dir()
        self._append_line(message)

    def append_log_if_present(self, message: str) -> bool:
        """Append to the log of a job whose directory exists; never creates it."""
        try:
            self._append_line(message)
        except FileNotFoundError:
            return False
        return True

    def _append_line(self, message: str) -> None:
        stamp = clock.now().astimezone(dt.UTC).isoformat(timespec="seconds")
        line = f"{stamp} {' '.join(message.splitlines())}\n".encode()
        fd = os.open(
            self.path / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE
        )
        try:
            os.write(fd, line)  # one write: appenders never interleave within a line
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_job_file(self, data: dict[str, Any]) -> None:
        """Replace `job.yaml` atomically."""
        self._require_lock("write_job_file")
        text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
        temporary = self.path / f".{JOB_FILE}.tmp"
        with _space_errors():
            _write_synced(temporary, text.encode())
            os.replace(temporary, self.path / JOB_FILE)
            _fsync_dir(self.path)

    # internals

    def _ensure_dir(self) -> None:
        """Create the job's directory (durably) unless it exists."""
        try:
            self.path.mkdir(mode=DIR_MODE)
        except FileExistsError:
            return
        except FileNotFoundError:
            raise FailedPrecondition(f"repository {self.path.parent} does not exist") from None
        _fsync_dir(self.path.parent)

    def _require_lock(self, action: str) -> None:
        if self._lock_fd is None:
            raise FailedPrecondition(f"job {self.name}: {action} needs the job lock")

    def _check_belongs(self, meta: RevisionMeta) -> None:
        validate_revision_id(meta.id)
        if meta.job != self.name:
            raise InvalidArgument("job", f"revision {meta.id} is of job {meta.job!r}")
        if meta.trust not in (TRUSTED, DISTRUSTED):
            raise InvalidArgument("trust", f"must be trusted or distrusted, not {meta.trust!r}")

    def _names(self) -> list[str]:
        try:
            return os.listdir(self.path)
        except FileNotFoundError:
            return []

    def _committed_ids(self) -> list[str]:
        return sorted(filter(None, map(committed_id, self._names())))

    def _all_ids(self) -> set[str]:
        """Every id that any file of this directory (committed or not) is named after."""
        return {match[1] for name in self._names() if (match := _REVISION_FILE.fullmatch(name))}

    def _newest_committed_id(self) -> str | None:
        committed = self._committed_ids()
        return committed[-1] if committed else None

    def _last_target(self) -> str | None:
        target = _readlink(self.path / LAST)
        if target and REVISION_ID.fullmatch(target) and self.rev_path(target).exists():
            return target
        return None

    def _last_is_current(self) -> bool:
        newest = self._newest_committed_id()
        expected = (newest, f"{newest}.rev") if newest else (None, None)
        return (_readlink(self.path / LAST), _readlink(self.path / LAST_REV)) == expected

    def _point_last(self) -> None:
        """Point `last`/`last.rev` at the newest committed revision (remove them if none)."""
        newest = self._newest_committed_id()
        if newest is None:
            _unlink(self.path / LAST)
            _unlink(self.path / LAST_REV)
        else:
            _replace_symlink(self.path, LAST, newest)
            _replace_symlink(self.path, LAST_REV, f"{newest}.rev")
        _fsync_dir(self.path)

    def _read_meta(self, revision_id: str) -> RevisionMeta:
        path = self.rev_path(revision_id)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise NotFound(f"job {self.name}: no revision {revision_id}") from None
        try:
            meta = RevisionMeta.from_yaml(text)
        except DataLoss as error:
            raise DataLoss(f"{path}: {error}") from error
        if meta.id != revision_id:
            raise DataLoss(f"{path}: metadata is of revision {meta.id!r}")
        return meta

    def _write_rev(self, meta: RevisionMeta) -> None:
        """Write `.<id>.rev.tmp`, fsync it, rename it to `<id>.rev` (no directory fsync)."""
        temporary = self.path / f".{meta.id}.rev.tmp"
        _write_synced(temporary, meta.to_yaml().encode())
        os.replace(temporary, self.rev_path(meta.id))


def _random_suffix(floor: int) -> int:
    """Four random hex digits, at least `floor`, so ids of one second sort in creation order.

    The first id of a second takes a random value in the lower half; each later one a
    random step of at most 256 above the greatest, so at least 128 ids fit in a second.
    """
    if floor == 0:
        return secrets.randbelow(0x8000)
    return floor + secrets.randbelow(min(0x10000 - floor, 0x100))


# --- writing one revision -------------------------------------------------------------


class RevisionWriter:
    """Writes one new revision: `start_from`, write blocks to `image_tmp_path`, `commit`.

    Use it as a context manager (or call `abort`) so a failure leaves nothing behind.
    """

    def __init__(self, job: JobDirectory, revision_id: str) -> None:
        self.job = job
        self.revision_id = revision_id
        self.image_tmp_path = job.path / f".{revision_id}.tmp"
        self.sums_tmp_path = job.path / f".{revision_id}.sums.tmp"
        self._renamed = False
        self._state = "open"  # -> "committed" | "aborted"

    def __enter__(self) -> RevisionWriter:
        return self

    @property
    def committed(self) -> bool:
        return self._state == "committed"

    def __exit__(self, *exc_info: object) -> None:
        if self._state == "open":
            self.abort()

    def start_from(self, parent: RevisionMeta | None, size: int) -> bool:
        """Make the temporary image a clone of `parent`'s (or empty), `size` bytes long.

        Returns True if the image was reflinked (costs no space until blocks change).
        """
        self._check_open()
        if size < 0:
            raise InvalidArgument("size", f"must not be negative, not {size}")
        with _space_errors():
            reflinked = False
            if parent is None:
                _write_synced(self.image_tmp_path, b"")
            else:
                self._check_parent(parent)
                reflinked = clone_file(self.job.image_path(parent.id), self.image_tmp_path)
                os.chmod(self.image_tmp_path, FILE_MODE)  # a clone has its parent's mode
            os.truncate(self.image_tmp_path, size)
        return reflinked

    def resize(self, size: int) -> None:
        """Make the temporary image `size` bytes long (the source grew or shrank)."""
        self._check_open()
        if size < 0:
            raise InvalidArgument("size", f"must not be negative, not {size}")
        with _space_errors():
            os.truncate(self.image_tmp_path, size)

    def commit(
        self,
        meta: RevisionMeta,
        manifest: Manifest,
        on_step: Callable[[str], None] | None = None,
    ) -> RevisionMeta:
        """Commit the revision (ARCHITECTURE.md, steps 1-5). `on_step(name)` runs before
        each step: "fsync-data", "rename-data", "write-rev", "fsync-dir", "update-last",
        and "done" at the end."""
        step = on_step or _no_step
        self._check_open()
        self._check_commit(meta, manifest)
        job = self.job
        with _space_errors():
            step("fsync-data")
            _fsync_file(self.image_tmp_path)
            manifest.write(self.sums_tmp_path)
            step("rename-data")
            os.replace(self.image_tmp_path, job.image_path(meta.id))
            self._renamed = True
            os.replace(self.sums_tmp_path, job.sums_path(meta.id))
            step("write-rev")
            job._write_rev(meta)  # the commit point
            self._state = "committed"
            step("fsync-dir")
            _fsync_dir(job.path)
            step("update-last")
            job._point_last()
            step("done")
        return meta

    def abort(self) -> None:
        """Remove everything of the uncommitted revision; a no-op once committed."""
        if self._state != "open":
            return
        self._state = "aborted"
        job = self.job
        paths = [self.image_tmp_path, self.sums_tmp_path, job.path / f".{self.revision_id}.rev.tmp"]
        if self._renamed and not job.rev_path(self.revision_id).exists():
            paths += [job.image_path(self.revision_id), job.sums_path(self.revision_id)]
        if any([_unlink(path) for path in paths]):
            _fsync_dir(job.path)

    def _check_open(self) -> None:
        self.job._require_lock(f"writing revision {self.revision_id}")
        if self._state != "open":
            raise FailedPrecondition(f"revision {self.revision_id} is already {self._state}")

    def _check_parent(self, parent: RevisionMeta) -> None:
        if parent.job != self.job.name or not self.job.rev_path(parent.id).exists():
            raise NotFound(f"job {self.job.name}: no revision {parent.id} to start from")
        if not parent.good:
            raise FailedPrecondition(f"revision {parent.id} is distrusted; it is never a parent")

    def _check_commit(self, meta: RevisionMeta, manifest: Manifest) -> None:
        if meta.id != self.revision_id:
            raise InvalidArgument("revision", f"writer of {self.revision_id} got {meta.id}")
        self.job._check_belongs(meta)
        if meta.checksum != ALGORITHM:
            raise InvalidArgument("checksum", f"only {ALGORITHM} is supported")
        if (manifest.block_size, manifest.size) != (meta.block_size, meta.size):
            raise InvalidArgument(
                "manifest",
                f"covers {manifest.size} bytes in blocks of {manifest.block_size}, "
                f"the revision {meta.size} bytes in blocks of {meta.block_size}",
            )
        image_size = os.stat(self.image_tmp_path).st_size
        if image_size != meta.size:
            raise FailedPrecondition(f"image is {image_size} bytes, the revision {meta.size}")


def _no_step(name: str) -> None:
    pass
