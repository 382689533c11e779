"""The source interface: what a backup needs from wherever the image lives."""

from __future__ import annotations

import abc
import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from backupd.extents import Extent
from lifeboat.errors import FailedPrecondition


class Snapshot(abc.ABC):
    """A frozen view of the source for one backup."""

    size: int
    # True where the snapshot is a point-in-time copy (the source may change meanwhile);
    # False where reads see the live source, which must stay quiet until the end.
    point_in_time: bool = False

    @abc.abstractmethod
    def read_into(self, offset: int, buffer: memoryview) -> None:
        """Fill `buffer` with the bytes at `offset`; raises SourceChanged on a short read."""

    def read_many(self, pieces: Iterable[Extent]) -> Iterator[tuple[int, memoryview]]:
        """Read pieces in order; each yielded view is valid until the next one is asked for.

        Sources with latency (Ceph) override this to keep several reads in flight.
        """
        buffer = bytearray()
        for offset, length in pieces:
            if len(buffer) < length:
                buffer = bytearray(length)
            view = memoryview(buffer)[:length]
            self.read_into(offset, view)
            yield offset, view

    @contextlib.contextmanager
    def reading(self, pieces: Iterable[Extent]) -> Iterator[Iterator[tuple[int, memoryview]]]:
        """`read_many(pieces)`, closed on exit even when not read to the end, so that no
        read is left in flight."""
        stream = self.read_many(pieces)
        try:
            yield stream
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    @abc.abstractmethod
    def data_extents(self, start: int, end: int) -> Iterator[Extent]:
        """Extents within [start, end) that may hold data; everything else reads as zeros."""

    @abc.abstractmethod
    def changed_extents(self) -> list[Extent] | None:
        """Extents that changed since the parent's snapshot, or None when unknown
        (then every block is compared against the parent's manifest)."""


class SourceDriver(abc.ABC):
    """Opens snapshots of one source and cleans up after good backups.

    Used as a context manager for one backup: whatever a driver connects to is opened at
    most once per backup and closed on exit.
    """

    kind: str

    def __enter__(self) -> SourceDriver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release what the driver opened (connections); it may be used again after."""
        return None

    @abc.abstractmethod
    def describe(self) -> str:
        """A short text for logs, e.g. "file /var/lib/images/vm.raw"."""

    @abc.abstractmethod
    def snapshot(self, revision_id: str, parent_id: str | None) -> AbstractContextManager[Snapshot]:
        """Freeze the source as of now; `parent_id` is the revision to diff against."""

    def after_good_backup(self, revision_id: str) -> None:
        """Drop what is no longer needed now that `revision_id` is safely stored."""
        return None

    def discard(self, revision_id: str) -> None:
        """Drop what `snapshot` kept for `revision_id`, which was never committed."""
        return None


class SourceError(FailedPrecondition):
    """The source cannot be read as a consistent image (missing, shrank, unreadable)."""


READ_AHEAD = 3
_END = object()


def read_ahead(
    read_into: Callable[[int, memoryview], None], pieces: Iterable[Extent]
) -> Iterator[tuple[int, memoryview]]:
    """Read `pieces` in a helper thread, up to READ_AHEAD ahead of the consumer.

    Each yielded view is valid until the next one is asked for; its buffer is reused then.
    """
    ready: queue.Queue[Any] = queue.Queue(maxsize=READ_AHEAD)
    free: queue.Queue[bytearray] = queue.Queue()
    for _ in range(READ_AHEAD + 2):
        free.put(bytearray())
    stop = threading.Event()

    def produce() -> None:
        try:
            for offset, length in pieces:
                buffer = free.get()
                if len(buffer) < length:
                    buffer = bytearray(length)
                read_into(offset, memoryview(buffer)[:length])
                if stop.is_set():
                    return
                ready.put((offset, length, buffer))
            ready.put(_END)
        except BaseException as error:  # handed to the consumer, which raises it
            ready.put(error)

    reader = threading.Thread(target=produce, name="read-ahead", daemon=True)
    reader.start()
    try:
        while (item := ready.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            offset, length, buffer = item
            yield offset, memoryview(buffer)[:length]
            free.put(buffer)
    finally:
        stop.set()
        while reader.is_alive():  # unblock a producer waiting for room, then let it end
            with contextlib.suppress(queue.Empty):
                ready.get(timeout=0.05)
            free.put(bytearray())
        reader.join()
