"""Block-level file I/O: reading and writing ranges whole, punching holes where data
became zeros. A failed read or write raises OSError naming the offset it failed at (and
the file, where the caller gives its path)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
SYNC_FILE_RANGE_WRITE = 0x2


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate [offset, offset+length): it reads as zeros and uses no space.

    Where the filesystem cannot punch holes, zeros are written instead.
    """
    if length <= 0:
        return
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return
    error = ctypes.get_errno()
    if error not in (95, 22):  # EOPNOTSUPP, EINVAL: no hole punching here
        raise failed_at(OSError(error, os.strerror(error)), offset)
    zeros = memoryview(bytes(min(length, 1 << 20)))
    while length > 0:
        count = min(length, len(zeros))
        write_all(fd, zeros[:count], offset)
        offset, length = offset + count, length - count


def read_into(fd: int, view: memoryview, offset: int, path: Path | str | None = None) -> int:
    """Fill `view` from `offset`; returns how many bytes were read (fewer only at the end)."""
    done = 0
    while done < len(view):
        try:
            count = os.preadv(fd, [view[done:]], offset + done)
        except OSError as error:
            raise failed_at(error, offset + done, path) from error
        if count == 0:
            break
        done += count
    return done


def write_all(fd: int, data: memoryview, offset: int, path: Path | str | None = None) -> None:
    """Write all of `data` at `offset`."""
    while data:
        try:
            written = os.pwrite(fd, data, offset)
        except OSError as error:
            raise failed_at(error, offset, path) from error
        data, offset = data[written:], offset + written


def failed_at(error: OSError, offset: int, path: Path | str | None = None) -> OSError:
    """`error` of a read or write at `offset`, its text naming the offset; the file is
    `path` if given, else whatever `error` named."""
    name = str(path) if path is not None else error.filename
    return OSError(error.errno, f"{error.strerror} at offset {offset}", name)


def naming(error: OSError, path: Path | str) -> OSError:
    """`error` naming the file `path` unless it names one already."""
    return error if error.filename else OSError(error.errno, error.strerror, str(path))


def start_writeback(fd: int) -> None:
    """Start writing the file's dirty pages out without waiting, so that the fsync at the
    end finds little left to do. A hint only: failures are ignored."""
    _libc.sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)
