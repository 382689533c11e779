"""ReadRevision streams: a revision's verified data, piece by piece, at the client's pace.

A stream is not a restore: it is an operation of its own kind (STREAM), has its own
per-host limit (`stream-limit`) and never takes a restore slot, so neither
`restore-limit` nor the scheduler (which defers backups while restores run) sees it.
Its pace is the client's, so a client that takes no message for `stream-idle-timeout`
is cancelled: its slot is free again and the job's log says why.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from lifeboat.errors import Cancelled, LifeboatError
from lifeboat.operations import OperationRecord, OperationRegistry
from restored.reader import RevisionReader

log = logging.getLogger("lifeboat.restored")

DEFAULT_STREAM_CHUNK = 1024 * 1024
MIN_STREAM_CHUNK = 4096
MAX_STREAM_CHUNK = 3 * 1024 * 1024
"""Stays below gRPC's default 4 MiB limit on received messages."""

# Tasks that close idle streams, kept referenced until they are done.
_closing: set[asyncio.Task[None]] = set()


class IdleStream(Cancelled):
    """The client took no message for stream-idle-timeout."""


@dataclass(frozen=True)
class Piece:
    offset: int
    data: bytes
    size: int
    """The image size on the first piece, 0 on the others."""


class RevisionStream:
    """One ReadRevision call: (offset, data) pieces of at most `chunk_size` bytes, in order.

    `ended(stream, failure)` runs once, when the stream is closed."""

    def __init__(
        self,
        record: OperationRecord,
        peer: str,
        registry: OperationRegistry,
        reader: RevisionReader,
        chunk_size: int,
        idle_timeout: float,
        ended: Callable[[RevisionStream, BaseException | None], None],
    ) -> None:
        self.record = record
        self.peer = peer
        self.registry = registry
        self.reader = reader
        self.chunk_size = chunk_size
        self.idle_timeout = idle_timeout
        self._ended = ended
        self._ended_by: BaseException | None = None
        self._buffer = bytearray(max(chunk_size, reader.block_size))
        self._closed = False
        self._lock = threading.Lock()
        self._iterator = self._pieces()

    @property
    def size(self) -> int:
        return self.reader.size

    def _pieces(self) -> Iterator[tuple[int, bytes]]:
        done, total = 0, self.reader.data_bytes
        for chunk in self.reader.chunks(self._buffer):
            self.record.check_cancelled()
            for piece in chunk.pieces:
                if piece.data is None:
                    continue
                for start in range(0, piece.length, self.chunk_size):
                    data = piece.data[start : start + self.chunk_size].tobytes()
                    yield piece.offset + start, data
            done += chunk.data_bytes
            self.registry.progress(self.record, done, total)

    def next_piece(self) -> tuple[int, bytes] | None:
        """The next (offset, data) of the revision, None at the end; holes and zero blocks
        are skipped. Called from one thread at a time."""
        with self._lock:
            if self._closed:
                raise Cancelled(f"{self.record.name} is closed")
            return next(self._iterator, None)

    def idle(self) -> IdleStream:
        """The client took no message for the idle timeout: whatever ends the stream from
        now on, this is why."""
        self._ended_by = IdleStream(
            f"{self.record.name}: {self.peer} took no message"
            f" for {self.idle_timeout:g}s (stream-idle-timeout); cancelled"
        )
        return self._ended_by

    def close(self, failure: BaseException | None = None) -> None:
        """End the operation; waits for a `next_piece` running in another thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._ended(self, self._ended_by or failure)


async def serve(
    stream: RevisionStream, end_call: Callable[[LifeboatError], None]
) -> AsyncIterator[Piece]:
    """The stream's pieces, read off the event loop; closes the stream at the end.

    While the consumer holds a piece longer than the idle timeout (the client takes no
    message), `end_call` gets the reason, to end the call at once, and the stream is
    closed in the background."""
    loop = asyncio.get_running_loop()
    failure: BaseException | None = None
    try:
        async for piece in _read(stream):
            timer = loop.call_later(stream.idle_timeout, _expire, loop, stream, end_call)
            try:
                yield piece
            finally:
                timer.cancel()
    except (asyncio.CancelledError, GeneratorExit):
        failure = Cancelled(f"{stream.peer} stopped reading")
        raise
    except BaseException as error:
        failure = error
        raise
    finally:
        # Waits for a read still running in its thread (at most one chunk).
        stream.close(failure)


async def _read(stream: RevisionStream) -> AsyncIterator[Piece]:
    size: int | None = stream.size
    while (piece := await asyncio.to_thread(stream.next_piece)) is not None:
        yield Piece(*piece, size or 0)
        size = None
    if size is not None:  # no data at all: still say how big the image is
        yield Piece(0, b"", size)


def _expire(
    loop: asyncio.AbstractEventLoop,
    stream: RevisionStream,
    end_call: Callable[[LifeboatError], None],
) -> None:
    reason = stream.idle()
    end_call(reason)
    # The consumer is stopped where it waits for the client, so the stream will never
    # be asked for its next piece: close it now, off the event loop.
    task = loop.create_task(asyncio.to_thread(stream.close, reason))
    _closing.add(task)
    task.add_done_callback(_closing.discard)
