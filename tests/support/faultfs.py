"""faultfs: a FUSE passthrough filesystem that fails chosen reads and writes with EIO.

    python -m tests.support.faultfs SOURCE_DIR MOUNTPOINT \\
        [--fail-read NAME:OFFSET[:LENGTH]] [--fail-write NAME:OFFSET]

Every operation on MOUNTPOINT is passed through to SOURCE_DIR, except that a read of a
file whose path (relative to SOURCE_DIR, e.g. `vm-a.raw` or `vm-a/.*.tmp`) matches the
glob NAME fails with EIO where it overlaps [OFFSET, OFFSET+LENGTH) (without LENGTH: up to
the end of the file), and a write to such a file fails with EIO from OFFSET on. A read or
write that starts before the faulty range transfers the bytes before it and returns that
short count, so the caller's next call fails exactly at OFFSET.

Faults change at run time through the file `.faultfs-control` in the mount's root (not
listed by readdir), which holds the faults in force, one `fail-read SPEC` or
`fail-write SPEC` a line: truncating it switches every fault off, each write replaces
them with the lines written (so `echo fail-write 'x:0' > .faultfs-control` does both).

Mounted with `direct_io` and no attribute or entry caching, so every read and write of an
application reaches this process (nothing is served from the kernel's page cache) and
changes made in SOURCE_DIR behind the mount's back are seen at once. It runs in the
foreground until unmounted (`umount MOUNTPOINT`); as root, libfuse mounts and unmounts
with the system calls, so fusermount is not needed. Needs fusepy and libfuse.so.2.
"""

from __future__ import annotations

import argparse
import errno
import fnmatch
import os
from dataclasses import dataclass
from typing import Any

CONTROL = ".faultfs-control"
_CONTROL_PATH = "/" + CONTROL
_CONTROL_FH = 2**64 - 1  # the `fh` of an open control file: no descriptor
_STAT_KEYS = (
    "st_mode",
    "st_ino",
    "st_dev",
    "st_nlink",
    "st_uid",
    "st_gid",
    "st_size",
    "st_blocks",
    "st_blksize",
    "st_atime_ns",
    "st_mtime_ns",
    "st_ctime_ns",
)


@dataclass(frozen=True)
class Fault:
    """Reads or writes of files matching `pattern` fail from `offset` on, for `length`
    bytes (None: to the end of the file)."""

    kind: str  # "fail-read" or "fail-write"
    pattern: str
    offset: int
    length: int | None = None

    def hits(self, path: str, offset: int, size: int) -> bool:
        if not fnmatch.fnmatchcase(path, self.pattern):
            return False
        end = None if self.length is None else self.offset + self.length
        return offset + size > self.offset and (end is None or offset < end)

    def spec(self) -> str:
        length = "" if self.length is None else f":{self.length}"
        return f"{self.kind} {self.pattern}:{self.offset}{length}"


def parse_fault(kind: str, spec: str) -> Fault:
    """`NAME:OFFSET[:LENGTH]` (LENGTH for reads only) as a Fault; ValueError if malformed."""
    if kind not in ("fail-read", "fail-write"):
        raise ValueError(f"unknown fault kind {kind!r}")
    name, _, numbers = spec.partition(":")
    fields = numbers.split(":") if numbers else []
    if not name or not 1 <= len(fields) <= (2 if kind == "fail-read" else 1):
        raise ValueError(f"{kind} wants NAME:OFFSET{'[:LENGTH]' if kind == 'fail-read' else ''}")
    offset = int(fields[0])
    length = int(fields[1]) if len(fields) == 2 else None
    if offset < 0 or (length is not None and length <= 0):
        raise ValueError(f"{spec}: the offset must not be negative, the length must be positive")
    return Fault(kind, name, offset, length)


def parse_faults(text: str) -> tuple[Fault, ...]:
    """The faults of the control file's text: one `KIND SPEC` per line."""
    faults = []
    for line in text.splitlines():
        if line.strip():
            kind, _, spec = line.strip().partition(" ")
            faults.append(parse_fault(kind, spec.strip()))
    return tuple(faults)


def _error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class FaultFS:
    """The passthrough, as fusepy's operations: fusepy registers the methods defined here
    and calls them through `__call__`; an OSError becomes the reply's errno. With raw_fi,
    file operations get the fuse_file_info whose `fh` holds the descriptor opened below."""

    use_ns = True

    def __init__(self, root: str, faults: tuple[Fault, ...]) -> None:
        self.root = os.path.realpath(root)
        self.faults = faults

    def __call__(self, operation: str, *args: Any) -> Any:
        return getattr(self, operation)(*args)

    def _full(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _hit(self, kind: str, path: str, offset: int, size: int) -> Fault | None:
        relative = path.lstrip("/")
        for fault in self.faults:
            if fault.kind == kind and fault.hits(relative, offset, size):
                return fault
        return None

    # -- the control file ------------------------------------------------------------------

    def _control_text(self) -> bytes:
        return "".join(f"{fault.spec()}\n" for fault in self.faults).encode()

    def _write_control(self, data: bytes) -> int:
        try:
            faults = parse_faults(data.decode())
        except (UnicodeDecodeError, ValueError):
            raise _error(errno.EINVAL) from None
        self.faults = faults
        return len(data)

    # -- attributes and names --------------------------------------------------------------

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        if path == _CONTROL_PATH:
            return {"st_mode": 0o100600, "st_nlink": 1, "st_size": len(self._control_text())}
        info = os.fstat(fh.fh) if fh else os.lstat(self._full(path))
        attrs = {key: getattr(info, key) for key in _STAT_KEYS}
        for key in ("st_atime", "st_mtime", "st_ctime"):  # fusepy wants these names, in ns
            attrs[key] = attrs.pop(f"{key}_ns")
        return attrs

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._full(path))]

    def readlink(self, path: str) -> str:
        return os.readlink(self._full(path))

    def statfs(self, path: str) -> dict[str, int]:
        info = os.statvfs(self._full(path))
        keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files")
        return {key: getattr(info, key) for key in (*keys, "f_ffree", "f_favail", "f_namemax")}

    def access(self, path: str, amode: int) -> None:
        if path != _CONTROL_PATH and not os.access(self._full(path), amode):
            raise _error(errno.EACCES)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._full(path), mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.chown(self._full(path), uid, gid, follow_symlinks=False)

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
        if times is None:
            os.utime(self._full(path), follow_symlinks=False)
        else:
            os.utime(self._full(path), ns=times, follow_symlinks=False)

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(self._full(path), mode)

    def rmdir(self, path: str) -> None:
        os.rmdir(self._full(path))

    def unlink(self, path: str) -> None:
        os.unlink(self._full(path))

    def symlink(self, target: str, source: str) -> None:
        os.symlink(source, self._full(target))

    def link(self, target: str, source: str) -> None:
        os.link(self._full(source), self._full(target))

    def rename(self, old: str, new: str) -> None:
        os.rename(self._full(old), self._full(new))

    def truncate(self, path: str, length: int, fh: Any = None) -> None:
        if path == _CONTROL_PATH:
            self.faults = ()
            return
        if fh:
            os.ftruncate(fh.fh, length)
        else:
            os.truncate(self._full(path), length)

    # -- open files ------------------------------------------------------------------------

    def open(self, path: str, fi: Any) -> int:
        fi.fh = _CONTROL_FH if path == _CONTROL_PATH else os.open(self._full(path), fi.flags)
        return 0

    def create(self, path: str, mode: int, fi: Any) -> int:
        fi.fh = os.open(self._full(path), fi.flags | os.O_CREAT, mode)
        return 0

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        if fi.fh == _CONTROL_FH:
            return self._control_text()[offset : offset + size]
        fault = self._hit("fail-read", path, offset, size)
        if fault is not None:
            if offset >= fault.offset:
                raise _error(errno.EIO)
            size = fault.offset - offset
        return os.pread(fi.fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        if fi.fh == _CONTROL_FH:
            return self._write_control(data)
        fault = self._hit("fail-write", path, offset, len(data))
        if fault is not None:
            if offset >= fault.offset:
                raise _error(errno.EIO)
            data = data[: fault.offset - offset]
        return os.pwrite(fi.fh, data, offset)

    def flush(self, path: str, fi: Any) -> None:
        return None

    def fsync(self, path: str, datasync: int, fi: Any) -> None:
        if fi.fh != _CONTROL_FH:
            (os.fdatasync if datasync else os.fsync)(fi.fh)

    def release(self, path: str, fi: Any) -> None:
        if fi.fh != _CONTROL_FH:
            os.close(fi.fh)

    def fsyncdir(self, path: str, datasync: int, fh: int) -> None:
        fd = os.open(self._full(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.faultfs", description=__doc__)
    parser.add_argument("source_dir")
    parser.add_argument("mountpoint")
    parser.add_argument("--fail-read", action="append", default=[], metavar="NAME:OFFSET[:LENGTH]")
    parser.add_argument("--fail-write", action="append", default=[], metavar="NAME:OFFSET")
    args = parser.parse_args(argv)
    try:
        faults = tuple(
            [parse_fault("fail-read", spec) for spec in args.fail_read]
            + [parse_fault("fail-write", spec) for spec in args.fail_write]
        )
    except ValueError as error:
        parser.error(str(error))
    import fuse  # fusepy, which loads libfuse.so.2: only in the filesystem's own process

    fuse.FUSE(
        FaultFS(args.source_dir, faults),
        args.mountpoint,
        foreground=True,
        raw_fi=True,
        fsname="faultfs",
        direct_io=True,
        big_writes=True,
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
    )


if __name__ == "__main__":
    main()
