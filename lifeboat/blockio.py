"""Block-level file I/O: reading ranges whole, punching holes where data became zeros."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

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
        raise OSError(error, os.strerror(error))
    zeros = bytes(min(length, 1 << 20))
    while length > 0:
        count = os.pwrite(fd, zeros[: min(length, len(zeros))], offset)
        offset, length = offset + count, length - count


def read_into(fd: int, view: memoryview, offset: int) -> int:
    """Fill `view` from `offset`; returns how many bytes were read (fewer only at the end)."""
    done = 0
    while done < len(view):
        count = os.preadv(fd, [view[done:]], offset + done)
        if count == 0:
            break
        done += count
    return done


def start_writeback(fd: int) -> None:
    """Start writing the file's dirty pages out without waiting, so that the fsync at the
    end finds little left to do. A hint only: failures are ignored."""
    _libc.sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)
