"""Sources a job's image is read from, behind one interface (see base.py)."""

from __future__ import annotations

from backupd.sources.base import SourceDriver
from lifeboat.model import CephRbdSource, FileSource, Source


def driver_for(source: Source) -> SourceDriver:
    if isinstance(source, FileSource):
        from backupd.sources.file import FileDriver

        return FileDriver(source)
    if isinstance(source, CephRbdSource):
        from backupd.sources.rbd import RbdDriver

        return RbdDriver(source)
    raise TypeError(f"unknown source {source!r}")
