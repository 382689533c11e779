"""The repository on disk: job directories, revisions and the commit protocol.

This module implements "On-disk format (the repository)" of ARCHITECTURE.md. Every
change to a job directory happens under its `.lock` (the `lock()` context manager of
one `JobDirectory` object); readers need no lock and only ever see revisions with a
`.rev` file. Revision ids sort by age, so "newest" means "greatest id" throughout.

A committed revision whose `.rev`, `.sums` or image cannot be read or do not agree is
*damaged*: readers list it as such (`DamagedRevision`, with a one-line reason naming the
file) and go on with the others; it is never a parent, never `last`, never restored.
`newest_good` alone decides what `last` means.
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
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from lifeboat import clock
from lifeboat.bounds import clip, name_problem
from lifeboat.clone import clone_file
from lifeboat.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from lifeboat.manifest import ALGORITHM, DEFAULT_BLOCK_SIZE, Manifest, read_geometry
from lifeboat.revision import (
    FORMAT_VERSION,
    Trust,
    Verification,
    parse_time,
    parse_trust,
    read_version,
    utc,
)

log = logging.getLogger(__name__)

REVISION_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{4}")
_REVISION_FILE = re.compile(r"\.?(\d{8}T\d{6}Z-[0-9a-f]{4})(?:\.sums|\.rev)?(?:\.tmp)?")
_ID_TIME_FORMAT = "%Y%m%dT%H%M%SZ"

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
    if not isinstance(name, str) or name_problem(name) is not None:
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
    trust: Trust = Trust.TRUSTED
    source: dict[str, Any] = dataclasses.field(default_factory=dict)
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    verification: Verification | None = None
    """None until the revision's stored copy has been compared with anything."""

    @property
    def good(self) -> bool:
        """Complete (it has a `.rev`) and not distrusted; a failed verification distrusts
        it whatever `trust` says. (Whether its files are intact is the listing's business:
        a damaged revision is a `DamagedRevision`.)"""
        failed = self.verification is not None and self.verification.failed
        return self.trust is Trust.TRUSTED and not failed

    def to_yaml(self) -> str:
        document = {
            "version": FORMAT_VERSION,
            "id": self.id,
            "job": self.job,
            "timestamp": utc(self.timestamp),
            "parent": self.parent,
            "tags": list(self.tags),
            "size": self.size,
            "block-size": self.block_size,
            "checksum": self.checksum,
            "trust": self.trust.value,
            "source": dict(self.source),
            "stats": dict(self.stats),
        }
        if self.verification is not None:
            document["verification"] = self.verification.to_yaml()
        return yaml.dump(
            document, Dumper=_MetaDumper, sort_keys=False, default_flow_style=None, width=1000
        )

    @classmethod
    def from_yaml(cls, text: str) -> RevisionMeta:
        """Parse `.rev` text; DataLoss if it is not valid revision metadata (an unknown
        format version included)."""
        try:
            document = yaml.load(text, Loader=_SafeLoader)
        except yaml.YAMLError as error:
            raise DataLoss(f"revision metadata is not YAML: {error}") from error
        if not isinstance(document, dict):
            raise DataLoss("revision metadata is not a mapping")
        read_version(document)
        verification = document.get("verification")
        return cls(
            id=_field(document, "id", str),
            job=_field(document, "job", str),
            timestamp=parse_time(document.get("timestamp"), "timestamp"),
            parent=_field(document, "parent", str, optional=True),
            tags=_tags(document.get("tags")),
            size=_field(document, "size", int),
            block_size=_field(document, "block-size", int),
            checksum=_field(document, "checksum", str),
            trust=parse_trust(document.get("trust")),
            source=_field(document, "source", dict, optional=True) or {},
            stats=_field(document, "stats", dict, optional=True) or {},
            # Written as {} before revisions without one left it out.
            verification=Verification.from_yaml(verification) if verification else None,
        )


# libyaml's parser and emitter where PyYAML was built with them: a `.rev` with a long
# verification record takes milliseconds in pure Python, and every backup reads its parent's.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _MetaDumper(_SafeDumper):  # type: ignore[misc,valid-type]
    """SafeDumper that writes timestamps as ISO 8601 with a `T`, as in ARCHITECTURE.md."""

    def ignore_aliases(self, data: Any) -> bool:
        """Never `&id001`/`*id001`: the same time in two places is written twice."""
        return True


def _represent_datetime(dumper: yaml.SafeDumper, value: dt.datetime) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:timestamp", value.isoformat())


_MetaDumper.add_representer(dt.datetime, _represent_datetime)


def _field(document: dict[str, Any], key: str, kind: type, optional: bool = False) -> Any:
    value = document.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DataLoss(f"revision metadata: {key!r} must be {kind.__name__}, not {value!r}")
    return value


def _tags(value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise DataLoss(f"revision metadata: 'tags' must be a list of strings, not {value!r}")
    return value


def geometry_mismatch(sums: Path, geometry: tuple[int, int], meta: RevisionMeta) -> str | None:
    """Why a manifest of (block size, size) `geometry` is not the revision's; None if it
    fits."""
    block_size, size = geometry
    if (block_size, size) == (meta.block_size, meta.size):
        return None
    return (
        f"{sums}: covers {size} bytes in blocks of {block_size}, "
        f"the revision {meta.size} bytes in blocks of {meta.block_size}"
    )


# --- damage ---------------------------------------------------------------------------

MAX_REASON = 300
"""Characters of a damage reason kept: a damaged file may hold anything."""


class RevisionDamaged(FailedPrecondition):
    """A revision asked for by id is damaged: it cannot be used (restored, rewritten)."""


@dataclasses.dataclass(frozen=True)
class DamagedRevision:
    """A committed revision (it has a `.rev`) whose `.rev`, `.sums` or image cannot be
    read or do not agree. `reason` is one line naming `file`, the file at fault; `meta` is
    the `.rev`'s content when only the manifest or the image is damaged."""

    id: str
    job: str
    reason: str
    file: Path
    meta: RevisionMeta | None = None

    @property
    def timestamp(self) -> dt.datetime:
        """When it was made, as its id says."""
        stamp = dt.datetime.strptime(self.id[:16], _ID_TIME_FORMAT)
        return stamp.replace(tzinfo=dt.UTC)

    def error(self) -> RevisionDamaged:
        return RevisionDamaged(f"revision {self.id} of job {self.job} is damaged: {self.reason}")


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_REASON else f"{line[:MAX_REASON]}..."


class _DamageReports:
    """Which damage this process has written to a job's log, so that each is logged once
    however often it is read: keyed by the file at fault, its modification time and size
    (a file damaged again is reported again)."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, int, int]] = set()
        self._lock = threading.Lock()

    def first_time(self, damaged: DamagedRevision) -> bool:
        try:
            info = os.stat(damaged.file)
            key = (str(damaged.file), info.st_mtime_ns, info.st_size)
        except OSError:
            key = (str(damaged.file), -1, -1)
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
            return True


_DAMAGE_REPORTS = _DamageReports()

Entry = RevisionMeta | DamagedRevision
"""A committed revision as a reader finds it: intact, or damaged."""


def newest_good(
    newest_first: Iterable[Entry], tag: str = "", excluded: Collection[str] = ()
) -> RevisionMeta | None:
    """What `last` means: the newest good revision (complete, not distrusted, not
    damaged) of `newest_first`, carrying `tag` if one is given, whose id is not in
    `excluded`. Stops at the first match, so a lazy iterable is read only that far."""
    for entry in newest_first:
        if (
            isinstance(entry, RevisionMeta)
            and entry.good
            and (not tag or tag in entry.tags)
            and entry.id not in excluded
        ):
            return entry
    return None


@dataclasses.dataclass(frozen=True)
class RevisionListing:
    """Every committed revision of a job, oldest first: the intact ones and the damaged."""

    revisions: list[RevisionMeta]
    damaged: list[DamagedRevision]

    def entries(self) -> list[Entry]:
        """Intact and damaged revisions together, oldest first."""
        return sorted([*self.revisions, *self.damaged], key=lambda entry: entry.id)

    @property
    def newest(self) -> RevisionMeta | None:
        """The newest revision that is not damaged, good or not."""
        return self.revisions[-1] if self.revisions else None

    def last(self, tag: str = "") -> RevisionMeta | None:
        return newest_good(reversed(self.revisions), tag)


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


def replace_file(path: Path, data: bytes) -> None:
    """Make `path` hold `data` atomically and durably: a temporary file beside it (mode
    0600 whatever a leftover had), fsynced, renamed over it, the directory fsynced."""
    hidden = path.name if path.name.startswith(".") else f".{path.name}"
    temporary = path.with_name(f"{hidden}.tmp")
    _unlink(temporary)
    _write_synced(temporary, data)
    os.replace(temporary, path)
    _fsync_dir(path.parent)


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


def _links_to(revision_id: str | None) -> tuple[str | None, str | None]:
    """What `last` and `last.rev` hold when they point at `revision_id` (None: no links)."""
    return (revision_id, f"{revision_id}.rev") if revision_id else (None, None)


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
            if name_problem(entry.name) is None and entry.is_dir(follow_symlinks=False)
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

    def listing(self) -> RevisionListing:
        """The committed revisions (those with a `.rev`), intact and damaged, oldest first.
        Damage found is written to the job's log once."""
        entries = list(self._entries(self._committed_ids()))
        return RevisionListing(
            [e for e in entries if isinstance(e, RevisionMeta)],
            [e for e in entries if isinstance(e, DamagedRevision)],
        )

    def revisions(self) -> list[RevisionMeta]:
        """The committed revisions that are not damaged, oldest first."""
        return self.listing().revisions

    def entry(self, revision_id: str) -> Entry:
        """The committed revision `revision_id`, intact or damaged; for "last", the
        newest good revision (NotFound if there is none)."""
        if revision_id == LAST:
            last = self.last()
            if last is None:
                raise NotFound(f"job {self.name} has no good revision")
            return last
        return self._report(self._inspect(validate_revision_id(revision_id)))

    def listed_revision(self, revision_id: str) -> Entry | None:
        """What `listing()` lists for the committed id `revision_id`: intact or damaged
        (damage reported once), or None when it was deleted since the directory was
        listed."""
        try:
            return self._report(self._inspect(revision_id))
        except NotFound:
            return None

    def revision(self, revision_id: str) -> RevisionMeta:
        """The committed revision `revision_id` (or "last"); RevisionDamaged
        (FailedPrecondition, naming the file) when it is damaged."""
        entry = self.entry(revision_id)
        if isinstance(entry, DamagedRevision):
            raise entry.error()
        return entry

    def metadata(self, revision_id: str) -> RevisionMeta:
        """The `.rev` of committed revision `revision_id` alone, to rewrite it: a revision
        whose manifest or image is damaged can still be distrusted. RevisionDamaged when
        the `.rev` itself is."""
        entry = self._read_meta(validate_revision_id(revision_id))
        if isinstance(entry, DamagedRevision):
            self._report(entry)
            raise entry.error()
        return entry

    def last(self, tag: str = "", excluded: Collection[str] = ()) -> RevisionMeta | None:
        """The newest good revision (`newest_good`), or None. Reads revisions newest first
        and only until it finds one."""
        return newest_good(self._entries(reversed(self._committed_ids())), tag, excluded)

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
        """Remove what an interrupted writer left behind and re-point a stale `last` (at
        the newest good revision).

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
        self._repoint_stale_last()
        return removed

    def repair_last(self, listing: RevisionListing) -> bool:
        """Re-point `last` if it does not name `listing`'s newest good revision: under the
        job's lock, taken without waiting (a writer holding it re-points `last` itself).
        For the writer's read paths; True if it re-pointed."""
        last = listing.last()
        if self._last_links() == _links_to(last.id if last else None):
            return False
        try:
            with self.lock(blocking=False):
                return self._repoint_stale_last()
        except FailedPrecondition:
            return False

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
            pointed = self._last_links()[0]
            # Tags change no revision's goodness: only a revision no longer good, or a
            # good one newer than `last`, can move it.
            if not meta.good or pointed is None or meta.id > pointed:
                self._point_last()

    def delete(self, revision_id: str) -> None:
        """Uncommit (remove `.rev`), then remove the image and manifest; re-point `last`."""
        self._require_lock("delete")
        if not _unlink(self.rev_path(revision_id)):
            raise NotFound(f"job {self.name}: no revision {revision_id}")
        _fsync_dir(self.path)
        _unlink(self.image_path(revision_id))
        _unlink(self.sums_path(revision_id))
        if self._last_links()[0] in (revision_id, None):
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
        if not isinstance(meta.trust, Trust):
            raise InvalidArgument("trust", f"must be a Trust, not {meta.trust!r}")

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

    def _last_links(self) -> tuple[str | None, str | None]:
        return _readlink(self.path / LAST), _readlink(self.path / LAST_REV)

    def _point_last(self) -> bool:
        """Point `last`/`last.rev` at the newest good revision (remove them if there is
        none) unless they already do; True if they changed. Needs the lock."""
        last = self.last()
        return self._point_last_at(last.id if last else None)

    def _point_last_at(self, newest_good_id: str | None) -> bool:
        self._require_lock("pointing last")
        if self._last_links() == _links_to(newest_good_id):
            return False
        if newest_good_id is None:
            _unlink(self.path / LAST)
            _unlink(self.path / LAST_REV)
        else:
            _replace_symlink(self.path, LAST, newest_good_id)
            _replace_symlink(self.path, LAST_REV, f"{newest_good_id}.rev")
        _fsync_dir(self.path)
        return True

    def _repoint_stale_last(self) -> bool:
        before = self._last_links()[0]
        if not self._point_last():
            return False
        after = self._last_links()[0]
        log.info("job %s: re-pointed a stale last at %s (was %s)", self.name, after, before)
        return True

    def _entries(self, revision_ids: Iterable[str]) -> Iterator[Entry]:
        """The revisions `revision_ids` as found (those deleted meanwhile left out), each
        damaged one reported."""
        for revision_id in revision_ids:
            entry = self.listed_revision(revision_id)
            if entry is not None:
                yield entry

    def _report(self, entry: Entry) -> Entry:
        """Write damage to the job's log (and the daemon's) the first time it is seen; a
        log that cannot be written never fails a read."""
        if isinstance(entry, DamagedRevision) and _DAMAGE_REPORTS.first_time(entry):
            message = f"revision {entry.id} damaged: {entry.reason}"
            log.warning("job %s: %s", self.name, message)
            try:
                self.append_log_if_present(message)
            except OSError as error:
                log.warning("job %s: cannot append to the log: %s", self.name, error)
        return entry

    def _inspect(self, revision_id: str) -> Entry:
        """A committed revision, intact or damaged; NotFound if it has no `.rev` (any more)."""
        meta = self._read_meta(revision_id)
        if isinstance(meta, DamagedRevision):
            return meta
        problem = self._files_problem(meta)
        if problem is None:
            return meta
        if not self.rev_path(revision_id).exists():  # deleted: `.rev` goes first
            raise NotFound(f"job {self.name}: no revision {revision_id}")
        file, reason = problem
        return DamagedRevision(revision_id, self.name, _one_line(reason), file, meta)

    def _read_meta(self, revision_id: str) -> RevisionMeta | DamagedRevision:
        """The `.rev` parsed, or why it cannot be; NotFound if there is none."""
        path = self.rev_path(revision_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"job {self.name}: no revision {revision_id}") from None
        except OSError as error:
            problem = error.strerror or str(error)
        else:
            try:
                return self._parse_meta(revision_id, data)
            except DataLoss as error:
                problem = str(error)
        return DamagedRevision(revision_id, self.name, _one_line(f"{path}: {problem}"), path)

    def _parse_meta(self, revision_id: str, data: bytes) -> RevisionMeta:
        """The `.rev` of `revision_id` from its bytes; DataLoss saying what is wrong."""
        if not data.strip():
            raise DataLoss("empty")
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise DataLoss("not UTF-8 text") from None
        meta = RevisionMeta.from_yaml(text)
        if meta.id != revision_id:
            raise DataLoss(f"metadata is of revision {clip(meta.id)}")
        if meta.job != self.name:
            raise DataLoss(f"metadata is of job {clip(meta.job)}")
        if meta.checksum != ALGORITHM:
            raise DataLoss(f"checksum {clip(meta.checksum)} is not supported")
        return meta

    def _files_problem(self, meta: RevisionMeta) -> tuple[Path, str] | None:
        """Which file of an intact `.rev`'s revision is damaged, and how; None if none is.
        Reads only the manifest's header and the image's size."""
        sums, image = self.sums_path(meta.id), self.image_path(meta.id)
        try:
            geometry = read_geometry(sums)
        except DataLoss as error:
            return sums, str(error)
        except OSError as error:
            return sums, f"{sums}: {error.strerror or error}"
        mismatch = geometry_mismatch(sums, geometry, meta)
        if mismatch is not None:
            return sums, mismatch
        try:
            info = os.lstat(image)
        except OSError as error:
            return image, f"{image}: {error.strerror or error}"
        if not stat.S_ISREG(info.st_mode):
            return image, f"{image}: not a regular file"
        if info.st_size != meta.size:
            return image, f"{image}: {info.st_size} bytes, the revision {meta.size}"
        return None

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
            if meta.good and meta.id == job._newest_committed_id():
                job._point_last_at(meta.id)  # no need to read the others
            else:
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
