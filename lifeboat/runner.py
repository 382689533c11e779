"""Running operations: an operation's work on a thread, and how it ended, recorded once.

backupd and restored both submit their operations' work here. The work runs on the
runner's thread pool; whatever it raises becomes the operation's end state and error
text through one table (`ENDINGS`), the end is logged and written to the job's log,
and the operation is finished in its `OperationRegistry`. Nothing here imports grpc.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from lifeboat.errors import Cancelled, LifeboatError, RetryLater
from lifeboat.operations import OperationKind, OperationRecord, OperationRegistry, OperationState
from lifeboat.repository import JobDirectory, Repository

log = logging.getLogger("lifeboat.operations")

# The first entry the failure is an instance of decides; anything else is a crash.
ENDINGS: tuple[tuple[type[BaseException], OperationState], ...] = (
    (RetryLater, OperationState.RETRY_LATER),
    (Cancelled, OperationState.CANCELLED),
    (LifeboatError, OperationState.FAILED),
    (OSError, OperationState.FAILED),
)
# Of an operation's end in the daemon's log; cancelled and retry-later ends are warnings.
_LEVELS = {OperationState.SUCCEEDED: logging.INFO, OperationState.FAILED: logging.ERROR}


@dataclass(frozen=True)
class Ending:
    """How an operation ended: its state and, unless it succeeded, why."""

    state: OperationState
    error: str = ""

    @property
    def outcome(self) -> str:
        return f"{self.state.value}: {self.error}" if self.error else self.state.value

    def noting(self, note: str) -> Ending:
        """The same ending with `note` (what else went wrong) after the error."""
        return Ending(self.state, f"{self.error}; {note}") if note else self


SUCCEEDED = Ending(OperationState.SUCCEEDED)


def describe_os_error(error: OSError) -> str:
    text = error.strerror or str(error)
    return f"{text}: {error.filename}" if error.filename else text


def ending_of(failure: BaseException, operation: str) -> Ending:
    """The state and error text of an operation whose work raised `failure`."""
    for kind, state in ENDINGS:
        if isinstance(failure, kind):
            text = describe_os_error(failure) if isinstance(failure, OSError) else str(failure)
            return Ending(state, text)
    log.error("%s crashed", operation, exc_info=failure)
    return Ending(OperationState.FAILED, f"internal error: {failure!r}")


def job_log_line(record: OperationRecord, ending: Ending) -> str | None:
    """The line an operation's end adds to its job's log: every restore's end, the
    failures of backups and verifications; none for streams (their client sees the end)."""
    if record.kind is OperationKind.RESTORE:
        return f"restore {record.name} to {record.target} {ending.outcome}"
    if record.kind is OperationKind.STREAM or ending.state is OperationState.SUCCEEDED:
        return None
    return f"{record.kind.value} {ending.outcome}"


def append_log(job_dir: JobDirectory, message: str) -> None:
    """Append to the job's log; a log that cannot be written never fails an operation."""
    try:
        job_dir.append_log(message)
    except (OSError, LifeboatError) as error:
        log.warning("cannot append to the log of job %s: %s (%s)", job_dir.name, error, message)


Work = Callable[[], Ending | None]
"""An operation's work: None (or an `Ending` it chose itself) when it returns; what it
raises is mapped by `ENDINGS`."""


class OperationRunner:
    """Runs the work of one worker's operations on its threads and finishes them.

    `on_end(record, ending)` (run on the operation's thread before the operation is
    finished) is where a worker keeps what it remembers about endings."""

    def __init__(
        self,
        registry: OperationRegistry,
        repository: Repository,
        max_threads: int,
        thread_name_prefix: str,
        on_end: Callable[[OperationRecord, Ending], None] | None = None,
    ) -> None:
        self.registry = registry
        self.repository = repository
        self.on_end = on_end
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_threads, thread_name_prefix=thread_name_prefix
        )
        # Referenced until done, so that no running operation is collected or forgotten
        # by `shutdown`.
        self._futures: set[concurrent.futures.Future[None]] = set()
        self._lock = threading.Lock()

    def submit(self, record: OperationRecord, work: Work) -> None:
        """Start `work` on a thread; never blocks, from the event loop or from a thread."""
        future = self._executor.submit(self._run, record, work)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)

    def _run(self, record: OperationRecord, work: Work) -> None:
        try:
            ending = work() or SUCCEEDED
        except BaseException as failure:
            ending = ending_of(failure, record.name)
        self.end(record, ending)

    def end(self, record: OperationRecord, ending: Ending) -> None:
        """Log how the operation ended, add its line to the job's log, and finish it."""
        log.log(_LEVELS.get(ending.state, logging.WARNING), "%s %s", record.name, ending.outcome)
        line = job_log_line(record, ending)
        job_dir = self.repository.job(record.job)
        if line is not None and job_dir.path.exists():
            append_log(job_dir, line)
        if self.on_end is not None:
            self.on_end(record, ending)
        self.registry.finish(record, ending.state, ending.error)

    def shutdown(self, timeout: float | None = None) -> None:
        """Ask every running operation to stop, and wait (at most `timeout` s) for the
        work submitted here to end."""
        for record in self.registry.select(running_only=True):
            record.cancel_requested.set()
        self._executor.shutdown(wait=False, cancel_futures=True)  # work not yet started
        with self._lock:
            running = list(self._futures)
        concurrent.futures.wait(running, timeout)
