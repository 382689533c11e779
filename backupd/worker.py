"""The backup worker of one host: limits, operations, retention, job status.

One backup per job at a time (an in-process map plus the job directory's
flock), at most `worker-limit` backups per host; nothing is locked globally.
Revisions and job status come from the revision cache (`lifeboat.revision_cache`),
which this worker's own writes keep current. Methods that touch files are either
async (they do so on threads) or for threads: the servicer never calls them on the
event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
import os
import shutil
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from backupd import hooks
from backupd.backup import BackupSettings, back_up, source_description
from backupd.sources import driver_for
from backupd.verify import VerifyLimits, verify_against_manifest
from lifeboat import clock, retention
from lifeboat.bounds import MAX_TAG_LENGTH, MAX_TAGS, clip
from lifeboat.clone import supports_reflink
from lifeboat.config import check_name
from lifeboat.config import load as load_config
from lifeboat.errors import (
    Cancelled,
    ConfigError,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    LifeboatError,
    NotFound,
    ResourceExhausted,
)
from lifeboat.manifest import Manifest
from lifeboat.model import Job, Schedule
from lifeboat.operations import OperationKind, OperationRecord, OperationRegistry, OperationState
from lifeboat.repository import (
    DIR_MODE,
    DamagedRevision,
    Entry,
    JobDirectory,
    Repository,
    RevisionMeta,
    geometry_mismatch,
    validate_job_name,
    validate_revision_id,
)
from lifeboat.revision import Trust, manifest_problem
from lifeboat.revision_cache import JobListing, RevisionCache
from lifeboat.runner import Ending, OperationRunner

log = logging.getLogger("lifeboat.backupd")

FULL_VERIFY_LIMITS = VerifyLimits(fraction=1.0, time_limit=7 * 24 * 3600.0)
MANUAL = "manual:"
T = TypeVar("T")


@dataclass(frozen=True)
class WorkerSettings:
    host: str
    base_dir: Path
    worker_limit: int
    backup: BackupSettings = field(default_factory=BackupSettings)
    # The jobs the config configures for `host`, by name: the only jobs backed up here.
    jobs: Mapping[str, Job] = field(default_factory=dict)
    config_path: str = ""


@dataclass
class JobHealth:
    """What the worker remembers about a job between backups (not persisted)."""

    last_error: str = ""
    last_error_time: dt.datetime | None = None


@dataclass
class JobStatus:
    job: str
    last_revision: RevisionMeta | None
    """The newest revision that is not damaged."""
    last_good_revision: RevisionMeta | None
    running: OperationRecord | None
    last_error: str
    last_error_time: dt.datetime | None
    revision_count: int
    """Every committed revision, damaged ones too."""
    bytes_used: int
    last_tag_times: dict[str, dt.datetime] = field(default_factory=dict)
    damaged: list[DamagedRevision] = field(default_factory=list)


@dataclass(frozen=True)
class HostStatus:
    host: str
    base_dir: Path
    free_bytes: int
    total_bytes: int
    running_backups: int
    worker_limit: int
    reflink: bool


def check_tags(
    tags: Sequence[str], schedule: Schedule | None, field_name: str = "tags"
) -> list[str]:
    """Tags a caller may put on a revision: the tags of the job's schedule, or `manual:NAME`
    (only those when the job is no longer configured: `schedule` None)."""
    if not tags:
        raise InvalidArgument(field_name, "at least one tag is required")
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(field_name, f"at most {MAX_TAGS} tags, got {len(tags)}")
    for tag in tags:
        _check_tag(tag, schedule, field_name)
    return sorted(set(tags))


def _check_tag(tag: str, schedule: Schedule | None, field_name: str) -> None:
    if len(tag) > MAX_TAG_LENGTH:
        # Its beginning only: an overlong value is never echoed whole.
        raise InvalidArgument(
            field_name,
            f"tag {clip(tag, MAX_TAG_LENGTH // 2)} is longer than {MAX_TAG_LENGTH} characters",
        )
    if tag.startswith(MANUAL):
        try:
            check_name(tag.removeprefix(MANUAL), "request", field_name)
        except ConfigError:
            raise InvalidArgument(field_name, f"invalid tag {clip(tag)}") from None
        return
    if schedule is None:
        raise InvalidArgument(
            field_name,
            f"tag {clip(tag)}: the job is not configured for this host, so only "
            f"{MANUAL}NAME tags may be added",
        )
    scheduled = [spec.name for spec in schedule.tags]
    if tag not in scheduled:
        raise InvalidArgument(
            field_name,
            f"tag {clip(tag)} is neither a tag of schedule {schedule.name} "
            f"({', '.join(scheduled)}) nor {MANUAL}NAME",
        )


def _manifest_of(job_dir: JobDirectory, meta: RevisionMeta) -> Manifest:
    """The revision's manifest; DataLoss (naming the file) if it is missing, unreadable or
    of another geometry than the revision."""
    path = job_dir.sums_path(meta.id)
    try:
        manifest = Manifest.read(path)
    except OSError as error:
        raise DataLoss(f"{path}: {error.strerror or error}") from None
    mismatch = geometry_mismatch(path, (manifest.block_size, manifest.size), meta)
    if mismatch is not None:
        raise DataLoss(mismatch)
    return manifest


def _recover(job_dir: JobDirectory) -> None:
    """Remove an interrupted writer's leftovers (under the job's lock), saying so in the
    job's log."""
    removed = job_dir.recover()
    if removed:
        job_dir.append_log(f"recovery removed leftovers: {', '.join(removed)}")
        log.info("job %s: recovery removed %s", job_dir.name, ", ".join(removed))


class BackupWorker:
    def __init__(self, settings: WorkerSettings, registry: OperationRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.repository = Repository(settings.base_dir)
        self.revisions = RevisionCache()
        self.reflink = False
        self.health: dict[str, JobHealth] = {}
        self.runner = OperationRunner(
            registry, self.repository, 64, "backupd", on_end=self._remember_failure
        )
        # Separate from `runner`: a backup waits for its cleanup, which must never queue
        # behind backups that hold every thread of `executor`.
        self.cleanup_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="backupd-cleanup"
        )
        # Requests that wait for a job's lock (held by a backup for its whole duration)
        # wait here: never on the event loop, nor on the threads that status calls use.
        self.lock_waits = concurrent.futures.ThreadPoolExecutor(
            max_workers=16, thread_name_prefix="backupd-lock-wait"
        )

    def reconfigure(self, settings: WorkerSettings) -> None:
        if settings.base_dir != self.settings.base_dir:
            log.warning("base-dir changes need a restart; keeping %s", self.settings.base_dir)
            settings = replace(settings, base_dir=self.settings.base_dir)
        self.settings = settings
        log.info("%d jobs configured for host %s", len(settings.jobs), settings.host)

    def probe_reflink(self) -> None:
        """Find out whether base-dir can clone files: at start and on reload, never per
        call, since the probe writes two files there."""
        try:
            self.reflink = supports_reflink(self.settings.base_dir)
        except OSError as error:
            log.warning("cannot probe %s for reflinks: %s", self.settings.base_dir, error)
            self.reflink = False

    def recover_all(self) -> None:
        """Remove leftovers of interrupted backups in every job directory, and take group
        and other permissions off the repository where an older version left them."""
        self.repository.create()
        fixed = self.repository.make_private()
        if fixed:
            log.warning("%s: made %d entries private to the owner", self.settings.base_dir, fixed)
        for name in self.repository.job_names():
            job_dir = self.repository.job(name)
            fixed = job_dir.make_private()
            if fixed:
                log.warning(
                    "job %s: made %d files and directories private to the owner", name, fixed
                )
            try:
                with job_dir.lock(blocking=False):
                    _recover(job_dir)
            except FailedPrecondition:
                log.warning("job %s is locked by another process; not recovering it", name)

    # -- backups ---------------------------------------------------------------------------

    def configures(self, job: str) -> bool:
        """Whether `job` is configured for this host (as the config was last loaded)."""
        return job in self.settings.jobs

    def _not_configured(self, job: str) -> str:
        return (
            f"job {clip(job)} is not configured for host {self.settings.host} "
            f"in {self.settings.config_path}"
        )

    def unconfigured_error(self, job: str) -> LifeboatError:
        """Why `job` cannot be backed up here: NotFound, or FailedPrecondition when the
        config file now configures it but was not reloaded. Reads the file: call it off
        the event loop."""
        validate_job_name(job)
        message = self._not_configured(job)
        try:
            on_disk = load_config(self.settings.config_path).jobs.get(job)
        except ConfigError as error:
            log.warning("cannot read the config file again: %s", error)
            return NotFound(message)
        if on_disk is not None and on_disk.host == self.settings.host:
            return FailedPrecondition(
                f"{message} as loaded, but the file configures it now: "
                "reload the host's config (SIGHUP)"
            )
        return NotFound(message)

    async def start_backup(
        self, job_name: str, tags: Sequence[str]
    ) -> tuple[OperationRecord, bool]:
        """Start a backup of a configured job; returns (operation, started). A running backup
        is returned as is."""
        job = self.settings.jobs.get(job_name)
        if job is None:
            raise NotFound(self._not_configured(job_name))
        tags = check_tags(tags, job.schedule)
        record, started = self._start_backup(job, tags)
        if started:
            # Exists when the call returns, so the call's audit line lands in the job's log
            # (the backup creates it as well, whatever becomes of this call).
            await asyncio.to_thread(self._make_job_dir, job.name)
        return record, started

    def _make_job_dir(self, name: str) -> None:
        self.repository.create()
        self.repository.job(name).path.mkdir(mode=DIR_MODE, exist_ok=True)

    def _start_backup(self, job: Job, tags: list[str]) -> tuple[OperationRecord, bool]:
        """Without awaiting anything, so that no other start comes in between the checks
        and the new operation."""
        running = self.registry.select(job=job.name, running_only=True, kind=OperationKind.BACKUP)
        if running:
            return running[0], False
        busy = len(self.registry.running(OperationKind.BACKUP))
        if busy >= self.settings.worker_limit:
            raise ResourceExhausted(
                f"host {self.settings.host} runs {busy} backups (worker-limit "
                f"{self.settings.worker_limit}); try again later"
            )
        record = self.registry.create(OperationKind.BACKUP, job.name, tags=tuple(tags))
        job_dir = self.repository.job(job.name)
        self.runner.submit(record, lambda: self._run_backup(record, job, job_dir, tags))
        return record, True

    def _remember_failure(self, record: OperationRecord, ending: Ending) -> None:
        if ending.state in (OperationState.FAILED, OperationState.RETRY_LATER):
            self.health[record.job] = JobHealth(ending.error, clock.now())

    def _run_backup(
        self, record: OperationRecord, job: Job, job_dir: JobDirectory, tags: list[str]
    ) -> None:
        self.repository.create()
        with job_dir.lock(blocking=False), driver_for(job.source) as driver:
            _recover(job_dir)
            self.registry.start(record)
            job_dir.write_job_file(self._job_file(job))
            job_dir.append_log(f"backup started: tags {','.join(tags)} from {driver.describe()}")
            hooks.freeze(job, record.name)
            thaw_errors: list[str] = []
            meta = back_up(
                job_dir,
                job,
                tags,
                driver,
                self.settings.backup,
                lambda done, total: self.registry.progress(record, done, total),
                record.check_cancelled,
                thaw=lambda: self._thaw(job, job_dir, record.name, thaw_errors),
            )
            record.revision_id = meta.id
            self.revisions.remember(job_dir, meta)
            job_dir.append_log(self._describe_revision(meta))
            if thaw_errors:
                raise FailedPrecondition(f"{thaw_errors[0]} (revision {meta.id} was written)")
            if not meta.good:
                raise FailedPrecondition(
                    f"verification of revision {meta.id} FAILED at offsets "
                    f"{list(meta.verification.mismatched_offsets) if meta.verification else []}: "
                    "revision distrusted; "
                    "the next backup will be full"
                )
            # The source's cleanup waits on its own round trips (Ceph snapshot removal),
            # retention on the local disk: neither needs the other.
            cleanup = self.cleanup_executor.submit(driver.after_good_backup, meta.id)
            try:
                self._expire(job_dir, job)
            finally:
                cleanup.result()
            self.health.pop(job.name, None)

    @staticmethod
    def _thaw(job: Job, job_dir: JobDirectory, operation: str, errors: list[str]) -> None:
        """Thaw the source; a failure is kept to fail the operation once the revision is safe."""
        try:
            hooks.thaw(job, operation)
        except FailedPrecondition as error:
            log.error("job %s: %s", job.name, error)
            job_dir.append_log(f"backup: {error}")
            errors.append(str(error))

    @staticmethod
    def _job_file(job: Job) -> dict[str, Any]:
        return {
            "job": job.name,
            "host": job.host,
            "source": source_description(job),
            "schedule": {
                "name": job.schedule.name,
                "tags": {
                    t.name: {"interval": int(t.interval.total_seconds()), "keep": t.keep}
                    for t in job.schedule.tags
                },
            },
        }

    @staticmethod
    def _describe_revision(meta: RevisionMeta) -> str:
        stats, verification = meta.stats, meta.verification
        kind = "full" if stats.get("full") else f"changed blocks on parent {meta.parent}"
        checked = (
            f"verification {verification.state.value} "
            f"({verification.blocks_checked}/{verification.blocks_total} blocks)"
            if verification
            else "not verified"
        )
        return (
            f"backup wrote revision {meta.id} ({kind}): {stats.get('blocks-changed')} blocks changed, "
            f"{stats.get('bytes-written')} bytes written in {stats.get('duration')}s; "
            f"{checked}; tags {','.join(meta.tags)}"
        )

    def _expire(self, job_dir: JobDirectory, job: Job) -> None:
        """Apply retention after a good backup."""
        revisions = job_dir.revisions()
        plan = retention.expire(
            [retention.RetainedRevision(r.id, r.timestamp, frozenset(r.tags)) for r in revisions],
            job.schedule,
            clock.now(),
        )
        by_id = {r.id: r for r in revisions}
        for revision_id, tags in plan.remove_tags.items():
            if revision_id in plan.delete:
                continue
            meta = by_id[revision_id]
            self._update(job_dir, replace(meta, tags=sorted(set(meta.tags) - tags)))
            job_dir.append_log(
                f"retention removed tags {','.join(sorted(tags))} from {revision_id}"
            )
        for revision_id in plan.delete:
            self._delete(job_dir, revision_id)
            job_dir.append_log(f"retention deleted revision {revision_id} (no tags left)")

    def _update(self, job_dir: JobDirectory, meta: RevisionMeta) -> None:
        job_dir.update(meta)
        self.revisions.remember(job_dir, meta)

    def _delete(self, job_dir: JobDirectory, revision_id: str) -> None:
        job_dir.delete(revision_id)
        self.revisions.forget(job_dir, revision_id)

    async def _when_locked(self, job_dir: JobDirectory, work: Callable[[], T]) -> T:
        """`work()` on a thread holding the job's lock. A running backup holds it for its
        whole duration: the wait is on a thread of `lock_waits`, and a caller that stops
        waiting (its call is cancelled) leaves `work` undone when the lock comes free."""
        given_up = threading.Event()

        def locked() -> T:
            with job_dir.lock(blocking=True):
                if given_up.is_set():
                    raise Cancelled(f"job {job_dir.name}: the caller stopped waiting for the lock")
                return work()

        try:
            return await asyncio.get_running_loop().run_in_executor(self.lock_waits, locked)
        except asyncio.CancelledError:
            given_up.set()
            raise

    # -- revisions (the methods that read files are for threads, not the event loop) -------

    def _no_revisions(self, job: str) -> NotFound:
        return NotFound(f"job {job!r} has no revisions on host {self.settings.host}")

    def _existing_job(self, job: str) -> JobDirectory:
        job_dir = self.repository.job(job)
        if not job_dir.path.is_dir():
            raise self._no_revisions(job)
        return job_dir

    def job_listing(self, job: str) -> JobListing:
        """The job's revisions as backupd keeps them in memory, refreshed on change; a
        stale `last` is repaired on the way (backupd writes)."""
        job_dir = self.repository.job(job)
        listing = self.revisions.listing(job_dir)
        if listing is None:
            raise self._no_revisions(job)
        job_dir.repair_last(listing.listing)
        return listing

    def list_revisions(self, job: str) -> list[Entry]:
        return list(self.job_listing(job).entries)

    def get_entry(self, job: str, revision_id: str) -> Entry:
        """A revision by id, intact or damaged, or "last" (the newest good revision)."""
        if not revision_id:
            raise InvalidArgument("revision_id", "required (an id or 'last')")
        return self._existing_job(job).entry(revision_id)

    def get_revision(self, job: str, revision_id: str) -> RevisionMeta:
        """As `get_entry`, but a damaged revision is FailedPrecondition."""
        entry = self.get_entry(job, revision_id)
        if isinstance(entry, DamagedRevision):
            raise entry.error()
        return entry

    async def delete_revision(self, job: str, revision_id: str, confirm: str) -> None:
        if confirm != revision_id:
            raise InvalidArgument("confirm_revision_id", "must repeat revision_id exactly")
        validate_revision_id(revision_id)  # an id, never "last": that changes under a backup
        # Unknown revisions are refused at once, not after waiting for the lock; damaged
        # ones may be deleted too.
        meta = await asyncio.to_thread(self.get_entry, job, revision_id)
        job_dir = self.repository.job(job)

        def delete() -> None:
            self._delete(job_dir, meta.id)
            job_dir.append_log(f"revision {meta.id} deleted on request")

        await self._when_locked(job_dir, delete)

    async def update_tags(
        self, job: str, revision_id: str, add: Sequence[str], remove: Sequence[str]
    ) -> RevisionMeta:
        if not add and not remove:
            raise InvalidArgument("add_tags", "give tags to add or to remove")
        job_dir = await asyncio.to_thread(self._existing_job, job)
        if add:
            configured = self.settings.jobs.get(job)
            add = check_tags(add, configured.schedule if configured else None, "add_tags")
        return await self._when_locked(
            job_dir, lambda: self._retag(job_dir, revision_id, add, remove)
        )

    def _retag(
        self, job_dir: JobDirectory, revision_id: str, add: Sequence[str], remove: Sequence[str]
    ) -> RevisionMeta:
        """Under the job's lock."""
        meta = job_dir.revision(revision_id)
        tags = sorted((set(meta.tags) | set(add)) - set(remove))
        if add and len(tags) > MAX_TAGS:
            raise InvalidArgument(
                "add_tags",
                f"revision {meta.id} would carry {len(tags)} tags (at most {MAX_TAGS})",
            )
        # Only tags the revision carried are logged: `remove` is unchecked caller input.
        removed = sorted(set(meta.tags) - set(tags))
        updated = replace(meta, tags=tags)
        self._update(job_dir, updated)
        job_dir.append_log(
            f"revision {meta.id} tags changed on request: +{','.join(add)} -{','.join(removed)}"
        )
        return updated

    async def start_verify(self, job: str, revision_id: str) -> OperationRecord:
        entry = await asyncio.to_thread(self.get_entry, job, revision_id or "last")
        if isinstance(entry, DamagedRevision) and entry.meta is None:
            raise entry.error()  # without a readable `.rev` there is nowhere to record it
        record = self.registry.create(OperationKind.VERIFY, job, revision_id=entry.id)
        job_dir = self.repository.job(job)
        self.runner.submit(record, lambda: self._run_verify(record, job_dir, entry.id))
        return record

    def _run_verify(self, record: OperationRecord, job_dir: JobDirectory, revision_id: str) -> None:
        meta = job_dir.metadata(revision_id)
        try:
            manifest = _manifest_of(job_dir, meta)
        except DataLoss as problem:
            self._distrust_unreadable(job_dir, meta.id, str(problem))
            raise FailedPrecondition(f"{problem}: revision {meta.id} distrusted") from None
        self.registry.start(record, manifest.size)
        fd = os.open(job_dir.image_path(meta.id), os.O_RDONLY | os.O_CLOEXEC)
        try:
            result = verify_against_manifest(
                fd,
                manifest,
                FULL_VERIFY_LIMITS,
                lambda done, total: self.registry.progress(record, done, total),
                record.check_cancelled,
            )
        finally:
            os.close(fd)
        with job_dir.lock(blocking=True):
            current = job_dir.metadata(meta.id)
            self._update(
                job_dir,
                replace(current, verification=result, trust=result.trust_after(current.trust)),
            )
        job_dir.append_log(f"verify of {meta.id} against its manifest: {result.state.value}")
        if result.failed:
            raise FailedPrecondition(
                f"revision {meta.id} does not match its manifest at offsets "
                f"{list(result.mismatched_offsets)}: revision distrusted"
            )

    def _distrust_unreadable(self, job_dir: JobDirectory, revision_id: str, problem: str) -> None:
        """Record that the revision's manifest cannot be used: a failed verification."""
        with job_dir.lock(blocking=True):
            current = job_dir.metadata(revision_id)
            self._update(
                job_dir,
                replace(current, trust=Trust.DISTRUSTED, verification=manifest_problem(problem)),
            )
        job_dir.append_log(f"verify of {revision_id}: failed, revision distrusted: {problem}")

    # -- status ----------------------------------------------------------------------------

    def job_status(self, job: str) -> JobStatus:
        # Running first: a backup that ends in between is then seen as written, never
        # as neither running nor written (which would make the scheduler start it again).
        running = self.registry.select(job=job, running_only=True, kind=OperationKind.BACKUP)
        try:
            listing = self.job_listing(job)
        except NotFound:
            listing = JobListing(job, (), 0)
        health = self.health.get(job, JobHealth())
        return JobStatus(
            job=job,
            last_revision=listing.last,
            last_good_revision=listing.last_good,
            running=running[0] if running else None,
            last_error=health.last_error,
            last_error_time=health.last_error_time,
            revision_count=len(listing.entries),
            bytes_used=listing.bytes_used,
            last_tag_times=dict(listing.tag_times),
            damaged=listing.damaged,
        )

    def job_statuses(self) -> list[JobStatus]:
        return [self.job_status(name) for name in self.repository.job_names()]

    def host_status(self) -> HostStatus:
        base = self.settings.base_dir
        usage = shutil.disk_usage(base)
        return HostStatus(
            host=self.settings.host,
            base_dir=base,
            free_bytes=usage.free,
            total_bytes=usage.total,
            running_backups=len(self.registry.running(OperationKind.BACKUP)),
            worker_limit=self.settings.worker_limit,
            reflink=self.reflink,
        )

    def delete_job_data(self, job: str, confirm: str) -> int:
        if confirm != job:
            raise InvalidArgument("confirm_job", "must repeat the job name exactly")
        job_dir = self._existing_job(job)
        if self.configures(job):
            raise FailedPrecondition(
                f"job {job!r} is configured for host {self.settings.host} in "
                f"{self.settings.config_path}: remove it from the config and reload first"
            )
        if self.registry.select(job=job, running_only=True):
            raise FailedPrecondition(f"job {job!r} has a running operation; cancel it first")
        with job_dir.lock(blocking=False):
            count = len(job_dir.listing().entries())
            job_dir.append_log(f"all data of job {job} deleted on request ({count} revisions)")
            shutil.rmtree(job_dir.path)
        log.warning("deleted all data of job %s (%d revisions)", job, count)
        return count

    def shutdown(self) -> None:
        self.runner.shutdown()
        self.cleanup_executor.shutdown(wait=True)
        self.lock_waits.shutdown(wait=False, cancel_futures=True)
