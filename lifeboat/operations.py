"""Long-running work on a host: an in-memory registry of operations.

Worker threads update progress; callers poll or watch. Nothing here imports
grpc: the servicer glue turns `OperationRecord` into the proto.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from lifeboat import clock
from lifeboat.bounds import clip
from lifeboat.errors import Cancelled, NotFound

KEEP_FINISHED = 1000
PROGRESS_INTERVAL = 0.1


class OperationKind(enum.Enum):
    BACKUP = "backup"
    RESTORE = "restore"
    VERIFY = "verify"
    STREAM = "stream"


class OperationState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RETRY_LATER = "retry-later"

    @property
    def finished(self) -> bool:
        return self not in (OperationState.PENDING, OperationState.RUNNING)


@dataclass
class OperationRecord:
    """One operation. Mutated only through its methods, which bump `version`."""

    name: str
    kind: OperationKind
    job: str
    host: str
    tags: tuple[str, ...] = ()
    target: str = ""
    revision_id: str = ""
    restore_within: dt.timedelta | None = None
    state: OperationState = OperationState.PENDING
    # Looked up at each call, so a test that patches clock.now is obeyed.
    create_time: dt.datetime = field(default_factory=lambda: clock.now())
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    bytes_done: int = 0
    bytes_total: int = 0
    error: str = ""
    version: int = 0
    cancel_requested: threading.Event = field(default_factory=threading.Event, repr=False)
    _started_monotonic: float = 0.0
    _ended_monotonic: float = 0.0
    _progress_notified: float = 0.0

    def throughput(self) -> float:
        """Bytes per second since the operation started running."""
        if not self._started_monotonic or not self.bytes_done:
            return 0.0
        end = self._ended_monotonic if self.state.finished else time.monotonic()
        elapsed = max(end - self._started_monotonic, 1e-6)
        return self.bytes_done / elapsed

    def eta(self) -> dt.timedelta | None:
        rate = self.throughput()
        if self.state.finished or rate <= 0 or self.bytes_total <= 0:
            return None
        return dt.timedelta(seconds=max(self.bytes_total - self.bytes_done, 0) / rate)

    def meets_restore_within(self) -> bool:
        if self.restore_within is None:
            return True
        if self.state.finished:
            return (
                self.end_time is not None
                and self.start_time is not None
                and (self.end_time - self.start_time <= self.restore_within)
            )
        eta = self.eta()
        if eta is None or self.start_time is None:
            return True
        return (clock.now() - self.start_time) + eta <= self.restore_within

    def check_cancelled(self) -> None:
        """Called by worker threads between chunks of work."""
        if self.cancel_requested.is_set():
            raise Cancelled(f"operation {self.name} was cancelled")


class OperationRegistry:
    """All operations of one worker process, with change notification for watchers."""

    def __init__(self, host: str) -> None:
        self.host = host
        self._operations: OrderedDict[str, OperationRecord] = OrderedDict()
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._changed: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._changed = asyncio.Condition()

    def create(self, kind: OperationKind, job: str, **details: object) -> OperationRecord:
        stamp = clock.now().strftime("%Y%m%dT%H%M%SZ")
        name = f"{kind.value}-{job}-{stamp}-{next(self._counter)}"
        record = OperationRecord(name=name, kind=kind, job=job, host=self.host, **details)  # type: ignore[arg-type]
        with self._lock:
            self._operations[name] = record
            self._forget_old()
        self._notify()
        return record

    def _forget_old(self) -> None:
        finished = [n for n, op in self._operations.items() if op.state.finished]
        for name in finished[: max(len(finished) - KEEP_FINISHED, 0)]:
            del self._operations[name]

    def get(self, name: str) -> OperationRecord:
        with self._lock:
            record = self._operations.get(name)
        if record is None:
            raise NotFound(f"operation {clip(name)} not found on host {self.host}")
        return record

    def select(
        self, job: str = "", running_only: bool = False, kind: OperationKind | None = None
    ) -> list[OperationRecord]:
        with self._lock:
            records = list(self._operations.values())
        return [
            r
            for r in records
            if (not job or r.job == job)
            and (not running_only or not r.state.finished)
            and (kind is None or r.kind == kind)
        ]

    def running(self, kind: OperationKind) -> list[OperationRecord]:
        return self.select(running_only=True, kind=kind)

    def start(self, record: OperationRecord, bytes_total: int = 0) -> None:
        record.state = OperationState.RUNNING
        record.start_time = clock.now()
        record._started_monotonic = time.monotonic()
        record.bytes_total = bytes_total
        self._bump(record)

    def progress(
        self, record: OperationRecord, bytes_done: int, bytes_total: int | None = None
    ) -> None:
        record.bytes_done = bytes_done
        if bytes_total is not None:
            record.bytes_total = bytes_total
        # Watchers see progress at most every PROGRESS_INTERVAL: a backup reports every
        # chunk, and waking the event loop from a worker thread each time costs real time.
        now = time.monotonic()
        if now - record._progress_notified >= PROGRESS_INTERVAL:
            record._progress_notified = now
            self._bump(record)

    def finish(self, record: OperationRecord, state: OperationState, error: str = "") -> None:
        record.state = state
        record.error = error
        record.end_time = clock.now()
        record._ended_monotonic = time.monotonic()
        self._bump(record)

    def cancel(self, name: str) -> OperationRecord:
        record = self.get(name)
        if not record.state.finished:
            record.cancel_requested.set()
        return record

    def _bump(self, record: OperationRecord) -> None:
        record.version += 1
        self._notify()

    def _notify(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(self._wake())
        else:
            asyncio.run_coroutine_threadsafe(self._wake(), loop)

    async def _wake(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    async def watch(self, name: str, heartbeat: float = 1.0) -> AsyncIterator[OperationRecord]:
        """Yield the operation now and on every change (at least every `heartbeat` s) until it ends."""
        record = self.get(name)
        assert self._changed is not None, "bind_loop() first"
        seen = -1
        while True:
            if record.version != seen:
                seen = record.version
                # Decided before yielding: an operation that ends while the consumer
                # handles this update must still be sent once more, in its final state.
                finished = record.state.finished
                yield record
                if finished:
                    return
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), heartbeat)
                except TimeoutError:
                    seen = -1 if not record.state.finished else seen
