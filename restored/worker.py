"""The restore worker of one host: starts restores and streams, limits them, predicts.

Restores never wait: restored is its own process with its own limit (`restore-limit`),
reads committed revisions without any lock, and runs each restore on its own thread
as soon as it is asked. Nothing is locked globally; the only lock a restore may ever
take is the job's, and only without blocking (see distrust.py). Streams have a limit
of their own (`stream-limit`, see streams.py) and never take a restore slot.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from lifeboat.bounds import clip, duration_problem
from lifeboat.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from lifeboat.model import CephRbdSource, Job
from lifeboat.operations import OperationKind, OperationRecord, OperationRegistry
from lifeboat.repository import (
    LAST,
    REVISION_ID,
    DamagedRevision,
    JobDirectory,
    Repository,
    RevisionDamaged,
    RevisionMeta,
    validate_job_name,
)
from lifeboat.runner import SUCCEEDED, Ending, OperationRunner, append_log, ending_of
from restored.copy import DEFAULT_CHUNK_SIZE, copy_revision
from restored.distrust import Distruster, Finding
from restored.inflight import InFlight, InFlightRestores
from restored.reader import CorruptRevision, RevisionReader
from restored.streams import (
    DEFAULT_STREAM_CHUNK,
    MAX_STREAM_CHUNK,
    MIN_STREAM_CHUNK,
    IdleStream,
    RevisionStream,
)
from restored.targets import RestoreTarget, TargetPolicy, resolve_target
from restored.throughput import FILE_NAME, ThroughputMeter

log = logging.getLogger("lifeboat.restored")


@dataclass(frozen=True)
class RestoreSettings:
    host: str
    base_dir: Path
    restore_limit: int
    restore_targets: tuple[str, ...]
    stream_limit: int
    stream_idle_timeout: dt.timedelta
    jobs: Mapping[str, Job] = field(default_factory=dict)
    """The config's jobs on this host: restore-within, and the Ceph cluster of RBD jobs."""
    restore_within: dt.timedelta | None = None
    """The global default, for jobs found in the repository but not in the config."""
    chunk_size: int = DEFAULT_CHUNK_SIZE


@dataclass(frozen=True)
class RevisionChoice:
    """A revision id, or the newest good revision with `tag`, or (neither) the newest good."""

    revision_id: str = ""
    tag: str = ""


@dataclass(frozen=True)
class RestoreRequest:
    job: str
    target: str
    choice: RevisionChoice = RevisionChoice()
    overwrite: bool = False
    restore_within: dt.timedelta | None = None


@dataclass(frozen=True)
class RestoreEstimate:
    job: str
    revision_id: str
    size: int
    data_bytes: int
    predicted: dt.timedelta | None
    restore_within: dt.timedelta | None
    meets_restore_within: bool


@dataclass(frozen=True)
class EstimateReport:
    estimates: list[RestoreEstimate]
    throughput: float
    running_restores: int


class RestoreWorker:
    def __init__(self, settings: RestoreSettings, registry: OperationRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.repository = Repository(settings.base_dir)
        self.meter = ThroughputMeter(settings.base_dir / FILE_NAME)
        self.distruster = Distruster(self.repository)
        self.in_flight = InFlightRestores(self.repository)
        self._claims: dict[str, str] = {}  # target key -> operation name
        self._streams = 0
        self._claims_lock = threading.Lock()
        # Restores never wait for a thread: the pool starts threads only when needed,
        # and is made larger than restore-limit (a reload cannot grow it).
        self.runner = OperationRunner(
            registry, self.repository, max(settings.restore_limit, 256), "restored"
        )

    def reconfigure(self, settings: RestoreSettings) -> None:
        if settings.base_dir != self.settings.base_dir:
            log.warning("base-dir changes need a restart; keeping %s", self.settings.base_dir)
            settings = replace(settings, base_dir=self.settings.base_dir)
        self.settings = settings

    # -- choosing what to restore ----------------------------------------------------------

    def _job_dir(self, job: str) -> JobDirectory:
        if not job:
            raise InvalidArgument("job", "required")
        job_dir = self.repository.job(job)
        if not job_dir.exists():
            raise NotFound(f"job {job!r} has no revisions on host {self.settings.host}")
        return job_dir

    def _good(self, meta: RevisionMeta) -> bool:
        return meta.good and not self.distruster.is_pending(meta.job, meta.id)

    def choose_revision(self, job_dir: JobDirectory, choice: RevisionChoice) -> RevisionMeta:
        if choice.revision_id:
            if not REVISION_ID.fullmatch(choice.revision_id):
                raise InvalidArgument(
                    "revision_id", f"{clip(choice.revision_id)} is not a revision id"
                )
            meta = job_dir.entry(choice.revision_id)
            if isinstance(meta, DamagedRevision):
                raise self._refuse_damaged(meta)
            if not self._good(meta):
                raise FailedPrecondition(
                    f"revision {meta.id} of job {job_dir.name} is distrusted; restore another "
                    "revision (its raw image can still be copied by hand)"
                )
            return meta
        last = job_dir.last(choice.tag, self.distruster.pending_ids(job_dir.name))
        if last is None and choice.tag:
            raise NotFound(f"job {job_dir.name} has no good revision tagged {clip(choice.tag)}")
        if last is None:
            raise NotFound(f"job {job_dir.name} has no good revision")
        return last

    def _refuse_damaged(self, damaged: DamagedRevision) -> RevisionDamaged:
        """Why a damaged revision is not restored; one whose manifest or image is damaged
        is distrusted like any other mismatch (its `.rev` records it)."""
        error = damaged.error()
        if damaged.meta is None or not self._good(damaged.meta):
            return error
        finding = Finding(damaged.job, damaged.id, (), 0, 0, problem=damaged.reason)
        return RevisionDamaged(f"{error}: {self.distruster.distrust(finding)}")

    def _restore_within(self, job: str, requested: dt.timedelta | None) -> dt.timedelta | None:
        if requested is not None:
            problem = duration_problem(requested)
            if problem is not None:
                raise InvalidArgument("restore_within", problem)
            return requested
        configured = self.settings.jobs.get(job)
        return configured.restore_within if configured else self.settings.restore_within

    def _policy(self) -> TargetPolicy:
        settings = self.settings
        return TargetPolicy(settings.host, settings.restore_targets, settings.base_dir)

    # -- claims: the limit, and one restore per target -----------------------------------

    def _claim(self, key: str) -> None:
        with self._claims_lock:
            holder = self._claims.get(key)
            if holder is not None:
                raise FailedPrecondition(f"target {clip(key)} is being restored by {holder}")
            if len(self._claims) >= self.settings.restore_limit:
                raise ResourceExhausted(
                    f"host {self.settings.host} runs {len(self._claims)} restores "
                    f"(restore-limit {self.settings.restore_limit}); try again later"
                )
            self._claims[key] = "a starting restore"

    def _claimed(self, key: str, record: OperationRecord) -> None:
        with self._claims_lock:
            self._claims[key] = record.name

    def _release(self, key: str) -> None:
        with self._claims_lock:
            self._claims.pop(key, None)

    def _claim_stream(self) -> None:
        with self._claims_lock:
            if self._streams >= self.settings.stream_limit:
                raise ResourceExhausted(
                    f"host {self.settings.host} serves {self._streams} revision streams "
                    f"(stream-limit {self.settings.stream_limit}); try again later"
                )
            self._streams += 1

    def _release_stream(self) -> None:
        with self._claims_lock:
            self._streams -= 1

    # -- restores --------------------------------------------------------------------------

    def _ceph_cluster(self, job: str) -> CephRbdSource | None:
        """The cluster of RBD targets: the job's own source's, when it is one."""
        configured = self.settings.jobs.get(job)
        source = configured.source if configured else None
        return source if isinstance(source, CephRbdSource) else None

    def start_restore(self, request: RestoreRequest) -> OperationRecord:
        """Check everything, open source and target, and start the restore on its own thread.

        Returns at once with the running operation; PermissionDenied, AlreadyExists etc.
        are raised before anything is written.
        """
        job_dir = self._job_dir(request.job)
        restore_within = self._restore_within(request.job, request.restore_within)
        meta = self.choose_revision(job_dir, request.choice)
        target = resolve_target(request.target, self._policy(), self._ceph_cluster(job_dir.name))
        self._claim(target.key)
        try:
            reader = RevisionReader(job_dir, meta)
        except BaseException:
            self._release(target.key)
            raise
        try:
            target.open(reader.size, request.overwrite)
        except BaseException:
            reader.close()
            self._release(target.key)
            raise
        record = self.registry.create(
            OperationKind.RESTORE,
            job_dir.name,
            target=target.text,
            revision_id=meta.id,
            restore_within=restore_within,
        )
        self._claimed(target.key, record)
        self._record_in_flight(record, target)
        self.runner.submit(record, lambda: self._run_restore(record, job_dir, reader, target))
        return record

    def recover_interrupted(self) -> None:
        """At start-up: remove the temporary files of restores that a restart interrupted."""
        self.in_flight.recover()

    def _record_in_flight(self, record: OperationRecord, target: RestoreTarget) -> None:
        """A restore whose record cannot be written still runs: only a crash would leave
        its temporary file behind, as it did before records were kept."""
        temporary = target.temporary_file()
        if temporary is None:
            return
        try:
            self.in_flight.record(InFlight.of(record.name, record.job, temporary))
        except OSError as error:
            log.warning("%s: cannot record the restore in flight: %s", record.name, error)

    def _forget_in_flight(self, record: OperationRecord) -> None:
        try:
            self.in_flight.forget(record.name)
        except OSError as error:
            log.warning("%s: cannot remove its in-flight record: %s", record.name, error)

    def _run_restore(
        self,
        record: OperationRecord,
        job_dir: JobDirectory,
        reader: RevisionReader,
        target: RestoreTarget,
    ) -> Ending | None:
        started = time.monotonic()
        self.registry.start(record, reader.data_bytes)
        log.info(
            "%s: revision %s of %s to %s", record.name, reader.meta.id, record.job, target.text
        )
        append_log(
            job_dir,
            f"restore of revision {reader.meta.id} to {target.text} started ({record.name})",
        )
        try:
            copy_revision(
                reader,
                target,
                lambda done, total: self.registry.progress(record, done, total),
                record.check_cancelled,
                self.settings.chunk_size,
            )
            target.finish()
        except BaseException as failure:
            return self._ending(failure, reader, record).noting(self._abort(target))
        finally:
            reader.close()
            self._forget_in_flight(record)
            self._release(target.key)
        self.meter.record(reader.data_bytes, time.monotonic() - started)
        return None

    def _ending(
        self, failure: BaseException, reader: RevisionReader, record: OperationRecord
    ) -> Ending:
        """How the operation ends; data that does not match its manifest is distrusted."""
        ending = ending_of(failure, record.name)
        if not isinstance(failure, CorruptRevision):
            return ending
        outcome = self.distruster.distrust(
            Finding(
                failure.job,
                failure.revision_id,
                tuple(failure.offsets),
                failure.offsets[-1] // reader.block_size + 1,
                reader.manifest.block_count,
            )
        )
        return Ending(ending.state, f"{ending.error}: {outcome}")

    @staticmethod
    def _abort(target: RestoreTarget) -> str:
        try:
            return target.abort()
        except Exception as error:
            log.exception("cleaning up %s failed", target.describe())
            return f"cleaning up {target.describe()} failed: {error}"

    # -- streams ---------------------------------------------------------------------------

    def open_stream(self, job: str, revision_id: str, chunk_size: int, peer: str) -> RevisionStream:
        """A verified stream of a revision's data, tracked as an operation of kind STREAM."""
        if chunk_size == 0:
            chunk_size = DEFAULT_STREAM_CHUNK
        if not MIN_STREAM_CHUNK <= chunk_size <= MAX_STREAM_CHUNK:
            raise InvalidArgument(
                "chunk_size", f"must be 0 or {MIN_STREAM_CHUNK}..{MAX_STREAM_CHUNK} bytes"
            )
        if not revision_id:
            raise InvalidArgument("revision_id", "required: a revision id or 'last'")
        job_dir = self._job_dir(job)
        choice = RevisionChoice() if revision_id == LAST else RevisionChoice(revision_id)
        meta = self.choose_revision(job_dir, choice)
        self._claim_stream()
        try:
            reader = RevisionReader(job_dir, meta)
        except BaseException:
            self._release_stream()
            raise
        record = self.registry.create(
            OperationKind.STREAM, job_dir.name, target=f"stream:{peer}", revision_id=meta.id
        )
        self.registry.start(record, reader.data_bytes)
        idle_timeout = self.settings.stream_idle_timeout.total_seconds()
        return RevisionStream(
            record, peer, self.registry, reader, chunk_size, idle_timeout, self._stream_ended
        )

    def _stream_ended(self, stream: RevisionStream, failure: BaseException | None) -> None:
        stream.reader.close()
        self._release_stream()
        if failure is None:
            self.runner.end(stream.record, SUCCEEDED)
            return
        ending = self._ending(failure, stream.reader, stream.record)
        if isinstance(failure, IdleStream):
            append_log(self.repository.job(stream.record.job), ending.error)
        self.runner.end(stream.record, ending)

    # -- estimates -------------------------------------------------------------------------

    def running_restores(self) -> int:
        return len(self.registry.running(OperationKind.RESTORE))

    def estimates(self, jobs: Sequence[str]) -> EstimateReport:
        known = set(self.repository.job_names()) | set(self.settings.jobs)
        for name in jobs:
            validate_job_name(name)
            if name not in known:
                raise NotFound(
                    f"job {name!r} is neither configured for nor stored on host "
                    f"{self.settings.host}"
                )
        names = sorted(set(jobs) if jobs else known)
        return EstimateReport(
            [self._estimate(name) for name in names],
            self.meter.bytes_per_second(),
            self.running_restores(),
        )

    def _estimate(self, job: str) -> RestoreEstimate:
        restore_within = self._restore_within(job, None)
        job_dir = self.repository.job(job)
        meta = job_dir.last(excluded=self.distruster.pending_ids(job)) if job_dir.exists() else None
        data_bytes = _data_bytes(job_dir, meta) if meta else 0
        predicted = self.meter.predict(data_bytes) if meta else None
        if restore_within is None:
            meets = True
        elif meta is None:
            meets = False  # nothing to restore meets no objective
        else:
            meets = predicted is None or predicted <= restore_within
        return RestoreEstimate(
            job=job,
            revision_id=meta.id if meta else "",
            size=meta.size if meta else 0,
            data_bytes=data_bytes,
            predicted=predicted,
            restore_within=restore_within,
            meets_restore_within=meets,
        )

    # -- stopping --------------------------------------------------------------------------

    def shutdown(self, timeout: float = 30.0) -> None:
        """Cancel running restores (their temporary files are removed) and streams, and
        wait for the restores."""
        self.runner.shutdown(timeout)
        self.distruster.stop()


def _data_bytes(job_dir: JobDirectory, meta: RevisionMeta) -> int:
    """Allocated bytes of the revision's image: what a restore has to copy."""
    try:
        info = os.stat(job_dir.image_path(meta.id))
    except FileNotFoundError:
        return 0
    return min(info.st_blocks * 512, meta.size)
