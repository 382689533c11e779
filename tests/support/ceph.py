"""A real, throw-away single-node Ceph cluster for tests (see ``tests/support/ceph-cluster``).

One monitor and one OSD, no mgr, authentication off, all state in one directory.
Start one with :meth:`CephCluster.start` and drive it with the ``rbd`` CLI
(:meth:`CephCluster.rbd`) or the ``rados``/``rbd`` Python modules using
:attr:`CephCluster.conf` as the conffile.

The start script reads its settings from the environment (``os.environ`` at the time of
:meth:`CephCluster.start`, which overrides some of them with its arguments):

``CEPH_OBJECTSTORE``
    The OSD's objectstore. ``memstore`` (the default) keeps everything in RAM, up to
    ``CEPH_MEMSTORE_BYTES`` (default 4 GiB). ``bluestore`` is production BlueStore
    (O_DIRECT, checksums, syncs, RocksDB and its WAL on the same device) on one sparse
    file, ``DIR/osd/ceph-0/block``, of ``CEPH_BLUESTORE_BYTES`` (default 8 GiB); its speed
    is that of the filesystem holding ``DIR`` (tmpfs or a real disk). Only its
    ``osd memory target`` is lowered, to 2 GiB. Startup takes a few seconds longer.
``CEPH_MEMSTORE_BYTES``, ``CEPH_BLUESTORE_BYTES``
    Capacity of the memstore OSD / size of the BlueStore block file, in bytes.
``CEPH_PORT``, ``CEPH_START_TIMEOUT``
    The monitor's port (default: a free one) and the start script's own deadline in
    seconds (default 60).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("ceph-cluster")
LINK_SCRIPT = Path(__file__).with_name("link-ceph-modules")
DEFAULT_POOL = "rbd"
BINARIES = ("ceph-mon", "ceph-osd", "ceph", "monmaptool", "rbd", "setsid")
OBJECTSTORES = ("memstore", "bluestore")

# Generous upper bounds; the cluster's own client timeouts (10-30 s) should fire first.
START_TIMEOUT = 120.0
COMMAND_TIMEOUT = 120.0


class CephCommandError(subprocess.CalledProcessError):
    """A failed ``rbd``/``ceph`` command; unlike its base class it shows stderr."""

    def __str__(self) -> str:
        stderr = self.stderr
        if isinstance(stderr, bytes):
            stderr = stderr.decode(errors="replace")
        detail = f": {stderr.strip()}" if stderr and stderr.strip() else ""
        return f"{super().__str__()}{detail}"


def ceph_available() -> tuple[bool, str]:
    """Whether a cluster can be started here, and if not, why not."""
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        return False, (
            f"Ceph not installed (missing {', '.join(missing)}; "
            "apt-get install ceph-mon ceph-osd ceph-common)"
        )
    if os.geteuid() != 0:
        return False, "the Ceph test cluster needs root"
    return True, "ceph-mon, ceph-osd and rbd are available and we are root"


def rbd_modules_importable() -> bool:
    """Whether ``import rados, rbd`` works in this interpreter.

    In a virtualenv, run ``tests/support/link-ceph-modules <venv>/bin/python`` first to link
    Debian's python3-rados/python3-rbd extension modules in.
    """
    try:
        import rados  # noqa: F401
        import rbd  # noqa: F401
    except ImportError:
        return False
    return True


_PR_SET_CHILD_SUBREAPER = 36


def _set_child_subreaper(on: bool) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def _adopting_orphans() -> Iterator[None]:
    """Become the parent of the daemons the start script leaves behind when it exits.

    Otherwise they are re-parented to PID 1, and where that is no real init (some
    containers) their exit leaves zombies nobody reaps. As their parent,
    :meth:`CephCluster.stop` can reap them. Only for the duration of the start script.
    """
    adopted = _set_child_subreaper(True)
    try:
        yield
    finally:
        if adopted:
            _set_child_subreaper(False)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _run(
    argv: list[str],
    *,
    input: str | bytes | None,
    text: bool | None,
    env: Mapping[str, str] | None,
    timeout: float,
) -> subprocess.CompletedProcess:
    if text is None:
        text = not isinstance(input, bytes)
    try:
        return subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=text,
            env=env,
            timeout=timeout,
            check=True,
        )
    except subprocess.CalledProcessError as error:
        raise CephCommandError(
            error.returncode, error.cmd, output=error.output, stderr=error.stderr
        ) from None


@dataclass(frozen=True)
class CephCluster:
    """A running cluster whose state lives in ``dir``."""

    dir: Path
    conf: Path
    pool: str = DEFAULT_POOL

    @classmethod
    def start(
        cls, dir: Path | str, *, port: int | None = None, objectstore: str | None = None
    ) -> CephCluster:
        """Create and start a fresh cluster in ``dir`` (absent or empty).

        Returns once ``rbd`` works on :attr:`pool`. ``port`` is the monitor's port; by
        default a free one is picked. ``objectstore`` ("memstore" or "bluestore") overrides
        ``CEPH_OBJECTSTORE`` (see the module docstring). Raises ``RuntimeError`` with the
        daemon log tails if the cluster does not come up.
        """
        if objectstore is not None and objectstore not in OBJECTSTORES:
            raise ValueError(f"objectstore must be one of {OBJECTSTORES}, not {objectstore!r}")
        path = Path(dir).absolute()
        env = dict(os.environ)
        env.pop("CEPH_POOL", None)
        if port is not None:
            env["CEPH_PORT"] = str(port)
        if objectstore is not None:
            env["CEPH_OBJECTSTORE"] = objectstore
        with _adopting_orphans():
            result = subprocess.run(
                [str(SCRIPT), "start", str(path)],
                capture_output=True,
                text=True,
                env=env,
                timeout=START_TIMEOUT,
                check=False,
            )
        if result.returncode != 0:
            raise RuntimeError(
                f"ceph-cluster start {path} failed (exit {result.returncode}):\n"
                f"{result.stderr}{result.stdout}"
            )
        return cls(dir=path, conf=path / "ceph.conf", pool=DEFAULT_POOL)

    def stop(self) -> None:
        """Stop the daemons (OSD, then monitor); waits for them to exit. Idempotent."""
        pids = self.pids()
        result = subprocess.run(
            [str(SCRIPT), "stop", str(self.dir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        for pid in pids.values():
            _reap(pid)
        if result.returncode != 0:
            raise RuntimeError(f"ceph-cluster stop {self.dir} failed:\n{result.stderr}")

    def pids(self) -> dict[str, int]:
        """The recorded daemon pids, by name ("mon.a", "osd.0"); empty once stopped."""
        found = {}
        for name in ("mon.a", "osd.0"):
            try:
                found[name] = int((self.dir / "run" / f"{name}.pid").read_text())
            except (FileNotFoundError, ValueError):
                continue
        return found

    def env(self) -> dict[str, str]:
        """``os.environ`` plus ``CEPH_CONF`` pointing at this cluster."""
        env = dict(os.environ)
        env["CEPH_CONF"] = str(self.conf)
        return env

    def rbd(
        self,
        *args: str,
        input: str | bytes | None = None,
        text: bool | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> subprocess.CompletedProcess:
        """Run ``rbd -c CONF *args``; raise :class:`CephCommandError` on failure.

        Output is text unless ``text=False`` or ``input`` is bytes.
        """
        return _run(
            ["rbd", "-c", str(self.conf), *args],
            input=input,
            text=text,
            env=self.env(),
            timeout=timeout,
        )

    def ceph(
        self, *args: str, input: str | bytes | None = None, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess:
        """Run ``ceph -c CONF *args`` (monitor commands only: there is no mgr)."""
        return _run(
            ["ceph", "-c", str(self.conf), *args],
            input=input,
            text=None,
            env=self.env(),
            timeout=timeout,
        )
