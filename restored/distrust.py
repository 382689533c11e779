"""Marking a revision distrusted when a restore finds it does not match its manifest,
or finds a manifest (or image) it cannot use at all.

Rewriting `.rev` needs the job's lock, which a running backup of that job may hold
for a long time. A failing restore never waits for it: it tries once, and if the lock
is busy the revision goes on a pending list that a background thread retries until
the update succeeds or the revision is gone. The finding is always written to the
job's log at once (appending needs no lock), so it is never lost silently.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

from lifeboat import clock
from lifeboat.errors import FailedPrecondition, NotFound
from lifeboat.repository import Repository, RevisionDamaged
from lifeboat.revision import (
    Against,
    Trust,
    Verification,
    VerificationState,
    manifest_problem,
)
from lifeboat.runner import append_log

log = logging.getLogger("lifeboat.restored")

RETRY_INTERVAL = 5.0


@dataclasses.dataclass(frozen=True)
class Finding:
    """Blocks at `offsets` do not match the manifest, or (`problem`) the manifest or the
    image cannot be used at all."""

    job: str
    revision_id: str
    offsets: tuple[int, ...]
    blocks_checked: int
    blocks_total: int
    problem: str = ""

    def verification(self) -> Verification:
        """The failed verification the revision's `.rev` records."""
        if self.problem:
            return manifest_problem(self.problem)
        return Verification(
            VerificationState.FAILED,
            Against.MANIFEST,
            time=clock.now(),
            blocks_checked=self.blocks_checked,
            blocks_total=self.blocks_total,
            mismatched_offsets=self.offsets,
        )


class Distruster:
    def __init__(self, repository: Repository, retry_interval: float = RETRY_INTERVAL) -> None:
        self.repository = repository
        self.retry_interval = retry_interval
        self._pending: dict[tuple[str, str], Finding] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def distrust(self, finding: Finding) -> str:
        """Mark the revision distrusted now if the job's lock is free, else later.

        Returns how it went, for the restore's error message.
        """
        if not finding.problem:  # damage is logged where it is found (lifeboat.repository)
            append_log(
                self.repository.job(finding.job),
                f"restore found revision {finding.revision_id} not matching its manifest at "
                f"block offsets {list(finding.offsets)}",
            )
        if self._try(finding):
            return "revision distrusted"
        with self._lock:
            self._pending[(finding.job, finding.revision_id)] = finding
            self._start_thread()
        log.warning(
            "job %s is locked (a backup is running): revision %s will be marked distrusted "
            "as soon as the lock is free",
            finding.job,
            finding.revision_id,
        )
        return "revision will be marked distrusted once the running backup releases the job lock"

    def is_pending(self, job: str, revision_id: str) -> bool:
        with self._lock:
            return (job, revision_id) in self._pending

    def pending_ids(self, job: str) -> set[str]:
        """The revisions of `job` waiting to be marked distrusted."""
        with self._lock:
            return {revision for name, revision in self._pending if name == job}

    def pending(self) -> list[Finding]:
        with self._lock:
            return list(self._pending.values())

    def _try(self, finding: Finding) -> bool:
        """True when done: distrusted now, or the revision no longer exists."""
        job_dir = self.repository.job(finding.job)  # a fresh object: its lock is its own
        try:
            with job_dir.lock(blocking=False):
                meta = job_dir.metadata(finding.revision_id)
                job_dir.update(
                    dataclasses.replace(
                        meta, trust=Trust.DISTRUSTED, verification=finding.verification()
                    )
                )
        except RevisionDamaged:
            log.warning(
                "revision %s of %s: its .rev cannot be read; nothing to distrust",
                finding.revision_id,
                finding.job,
            )
            return True
        except FailedPrecondition:  # the lock is busy
            return False
        except NotFound:
            log.info(
                "revision %s of %s is gone; nothing to distrust", finding.revision_id, finding.job
            )
            return True
        append_log(job_dir, f"revision {finding.revision_id} distrusted after a failed restore")
        log.warning("revision %s of job %s distrusted", finding.revision_id, finding.job)
        return True

    def _start_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._retry, name="distrust", daemon=True)
            self._thread.start()

    def _retry(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self.retry_interval)
            self._wake.clear()
            for finding in self.pending():
                try:
                    done = self._try(finding)
                except Exception:
                    log.exception(
                        "marking %s of %s distrusted failed", finding.revision_id, finding.job
                    )
                    done = False
                if done:
                    with self._lock:
                        self._pending.pop((finding.job, finding.revision_id), None)
            with self._lock:
                if not self._pending:
                    self._thread = None
                    return

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)
        for finding in self.pending():
            log.error(
                "stopping before revision %s of job %s could be marked distrusted (the job's "
                "log records the mismatch)",
                finding.revision_id,
                finding.job,
            )
