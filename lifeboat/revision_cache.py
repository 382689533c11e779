"""Each job's revisions kept in memory, so that status calls do not read every `.rev`.

A *listing* is what `JobDirectory.revisions()` returns, plus the bytes the job's files
allocate. It is refreshed on change, never rebuilt per call:

- This process's own writes (commits, tag and trust updates, deletions) update it
  directly (`remember`, `forget`).
- Other writers (restored distrusting a revision, an operator removing files by hand)
  are found from file stamps. Every look stats the job's directory, which every file
  created, renamed or removed there changes; a changed directory makes the look a
  *sweep*: list the directory, stat its files (bytes used, and each `.rev`'s stamp),
  and read again only the `.rev` files whose stamp changed.
- What changes no directory entry (a `.rev` edited in place, a temporary image growing)
  is found by a sweep in the background once the last sweep is SWEEP_INTERVAL old: the
  call that notices answers at once from the listing it has.

Concurrent looks at one job share the work: a caller that arrives while another looks
waits for it and then looks again only if no look began after it arrived.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import os
import threading
import time
from pathlib import Path

from lifeboat import clock
from lifeboat.repository import (
    DamagedRevision,
    Entry,
    JobDirectory,
    RevisionListing,
    RevisionMeta,
    committed_id,
)

log = logging.getLogger(__name__)

SWEEP_INTERVAL = dt.timedelta(seconds=1)
RACY_NS = 1_000_000_000
"""A file changed this recently may change again within the same timestamp tick of the
filesystem, unseen: its stamp is not trusted until it is older (as in git's index)."""

Stamp = tuple[int, int, int, int]
"""inode, size, mtime and ctime (ns): a file replaced by a rename gets a new inode."""
RevisionStamp = tuple[Stamp, Stamp | None, Stamp | None]
"""Of a revision's `.rev`, `.sums` and image: damage to any of them changes what it is."""


def _stamp(status: os.stat_result) -> Stamp:
    return (status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


def _revision_stamp(files: dict[str, Stamp], revision_id: str) -> RevisionStamp | None:
    rev = files.get(f"{revision_id}.rev")
    if rev is None:
        return None
    return (rev, files.get(f"{revision_id}.sums"), files.get(revision_id))


def _stat_revision(job_dir: JobDirectory, revision_id: str) -> RevisionStamp | None:
    files = {}
    for path in (job_dir.rev_path(revision_id), job_dir.sums_path(revision_id)):
        with contextlib.suppress(FileNotFoundError):
            files[path.name] = _stamp(os.stat(path))
    with contextlib.suppress(FileNotFoundError):
        files[revision_id] = _stamp(os.stat(job_dir.image_path(revision_id)))
    return _revision_stamp(files, revision_id)


@dataclasses.dataclass(frozen=True)
class JobListing:
    """One job's committed revisions (intact and damaged), oldest first, and the bytes its
    files allocate, as of the last look. Shared between callers: treat it as read-only."""

    job: str
    entries: tuple[Entry, ...]
    bytes_used: int

    @functools.cached_property
    def listing(self) -> RevisionListing:
        return RevisionListing(
            [entry for entry in self.entries if isinstance(entry, RevisionMeta)],
            [entry for entry in self.entries if isinstance(entry, DamagedRevision)],
        )

    @functools.cached_property
    def revisions(self) -> tuple[RevisionMeta, ...]:
        """The intact revisions."""
        return tuple(self.listing.revisions)

    @property
    def damaged(self) -> list[DamagedRevision]:
        return self.listing.damaged

    @property
    def last(self) -> RevisionMeta | None:
        """The newest intact revision, good or not."""
        return self.listing.newest

    @functools.cached_property
    def last_good(self) -> RevisionMeta | None:
        return self.listing.last()

    @functools.cached_property
    def tag_times(self) -> dict[str, dt.datetime]:
        """Each tag's newest revision time."""
        times: dict[str, dt.datetime] = {}
        for meta in self.listing.revisions:
            for tag in meta.tags:
                times[tag] = max(times.get(tag, meta.timestamp), meta.timestamp)
        return times


@dataclasses.dataclass(frozen=True)
class _Survey:
    """One pass over a job directory: its stamp, taken first, then each `.rev`'s."""

    began_ns: int
    directory: Stamp
    stamps: dict[str, RevisionStamp]
    bytes_used: int


@dataclasses.dataclass
class _Known:
    entry: Entry
    stamp: RevisionStamp | None
    """Of the revision's files when `entry` was read; None: read it again at the next sweep."""


@dataclasses.dataclass
class _Job:
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    started: int = 0
    """Looks begun (under `lock`)."""
    fresh: int = 0
    """The number of the last look that succeeded: its result is `listing`."""
    changes: int = 0
    """Changes to `known` (sweeps, own writes): a background sweep that began before
    one of them has older news and is dropped."""
    directory: Stamp | None = None
    """Of the directory when it was last swept; None: sweep at the next look."""
    swept_at: dt.datetime | None = None
    sweeping: bool = False
    """A background sweep is queued or running."""
    known: dict[str, _Known] = dataclasses.field(default_factory=dict)
    listing: JobListing | None = None

    def publish(self, name: str, bytes_used: int) -> None:
        """Make `listing` show `known`, keeping the same objects where nothing changed."""
        self.changes += 1
        entries = tuple(self.known[revision_id].entry for revision_id in sorted(self.known))
        old = self.listing
        if old is not None and _same(old.entries, entries):
            if old.bytes_used == bytes_used:
                return
            entries = old.entries
        self.listing = JobListing(name, entries, bytes_used)


def _same(old: tuple[Entry, ...], new: tuple[Entry, ...]) -> bool:
    return len(old) == len(new) and all(a is b for a, b in zip(old, new, strict=True))


def _survey(path: Path) -> _Survey:
    """Stat the directory, then each file in it: the `.rev` stamps, and the bytes the files
    allocate (shared reflinked extents count once per file). Files that vanish meanwhile
    (a backup's temporary files are renamed) are skipped."""
    # File stamps come from the kernel's clock: compare them with the real time.
    began_ns = time.time_ns()
    directory = _stamp(os.stat(path))
    files: dict[str, Stamp] = {}
    allocated = 0
    with os.scandir(path) as entries:
        for entry in entries:
            if not entry.is_file(follow_symlinks=False):
                continue
            try:
                status = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            allocated += status.st_blocks * 512
            files[entry.name] = _stamp(status)
    stamps = {}
    for name in files:
        revision_id = committed_id(name)
        stamp = _revision_stamp(files, revision_id) if revision_id is not None else None
        if revision_id is not None and stamp is not None:
            stamps[revision_id] = stamp
    return _Survey(began_ns, directory, stamps, allocated)


def _recent(stamp: Stamp | None, survey: _Survey) -> bool:
    return stamp is not None and stamp[2] > survey.began_ns - RACY_NS


def _trusted(stamp: Stamp, survey: _Survey) -> Stamp | None:
    return None if _recent(stamp, survey) else stamp


def _trusted_revision(stamp: RevisionStamp, survey: _Survey) -> RevisionStamp | None:
    return None if any(_recent(part, survey) for part in stamp) else stamp


class RevisionCache:
    """The listings of the jobs of one repository. Its methods read files: call them
    off the event loop."""

    def __init__(self, sweep_interval: dt.timedelta = SWEEP_INTERVAL) -> None:
        self.sweep_interval = sweep_interval
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._sweeper = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sweep")

    def listing(self, job_dir: JobDirectory) -> JobListing | None:
        """The job's listing, up to date as of this call but for what changes no directory
        entry; None if the job has no directory."""
        job = self._job(job_dir.name)
        arrived = job.started
        with job.lock:
            if job.fresh <= arrived:  # no look began since this call arrived
                job.started += 1
                number = job.started
                self._look(job_dir, job)
                job.fresh = number
            if job.listing is not None and self._sweep_due(job):
                job.sweeping = True
                self._sweeper.submit(self._sweep_in_background, job_dir, job)
            return job.listing

    def remember(self, job_dir: JobDirectory, meta: RevisionMeta) -> None:
        """`meta` was just written by this process, under the job's lock."""
        job = self._job(job_dir.name)
        with job.lock:
            if job.listing is None:
                return  # not looked at yet: the first look reads it
            stamp = _stat_revision(job_dir, meta.id)
            if stamp is None:
                job.known.pop(meta.id, None)
            else:
                entry = job_dir.listed_revision(meta.id)  # its files may be damaged even so
                if entry is None:
                    job.known.pop(meta.id, None)
                else:
                    job.known[meta.id] = _Known(entry, stamp)
            job.publish(job_dir.name, job.listing.bytes_used)

    def forget(self, job_dir: JobDirectory, revision_id: str) -> None:
        """Revision `revision_id` was just deleted by this process."""
        job = self._job(job_dir.name)
        with job.lock:
            if job.listing is not None and job.known.pop(revision_id, None) is not None:
                job.publish(job_dir.name, job.listing.bytes_used)

    def _job(self, name: str) -> _Job:
        with self._lock:
            return self._jobs.setdefault(name, _Job())

    def _drop(self, name: str, job: _Job) -> None:
        """Forget a job without a directory (callers may ask for any name)."""
        job.directory, job.known, job.listing = None, {}, None
        with self._lock:
            if self._jobs.get(name) is job:
                del self._jobs[name]

    def _look(self, job_dir: JobDirectory, job: _Job) -> None:
        try:
            if _stamp(os.stat(job_dir.path)) == job.directory:
                return
            survey = _survey(job_dir.path)
        except FileNotFoundError:
            self._drop(job_dir.name, job)
            return
        self._merge(job_dir, job, survey)

    def _merge(self, job_dir: JobDirectory, job: _Job, survey: _Survey) -> None:
        """Take in a survey (under the job's lock): read the `.rev` files that changed."""
        known: dict[str, _Known] = {}
        for revision_id, stamp in survey.stamps.items():
            old = job.known.get(revision_id)
            if old is not None and old.stamp == stamp:
                known[revision_id] = old
            elif (entry := job_dir.listed_revision(revision_id)) is not None:
                known[revision_id] = _Known(entry, _trusted_revision(stamp, survey))
        job.known = known
        job.directory = _trusted(survey.directory, survey)
        job.swept_at = clock.now()
        job.publish(job_dir.name, survey.bytes_used)

    def _sweep_due(self, job: _Job) -> bool:
        if job.sweeping or job.swept_at is None:
            return False
        return clock.now() - job.swept_at >= self.sweep_interval

    def _sweep_in_background(self, job_dir: JobDirectory, job: _Job) -> None:
        """A sweep whose survey holds no lock: looks meanwhile answer at once."""
        changes = job.changes
        try:
            survey = _survey(job_dir.path)
            with job.lock:
                if job.changes == changes:
                    self._merge(job_dir, job, survey)
        except FileNotFoundError:
            pass  # the next look forgets the job
        except Exception as error:  # the next look that needs it reports it to its caller
            log.warning("job %s: sweep failed: %s", job_dir.name, error)
        finally:
            with job.lock:
                job.sweeping = False
                job.swept_at = clock.now()
