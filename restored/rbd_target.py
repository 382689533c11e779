"""Restoring to a Ceph RBD image (`rbd:POOL/IMAGE`).

A new image is created at the revision's size when the restore starts (which claims
the name) and removed again if the restore fails. An existing image is written only
with overwrite: it is resized to the revision's size and holes are zeroed, so it ends
byte-identical to the revision.

The cluster is the one of the job's own ceph-rbd source when it has one (restoring a
Ceph VM to its cluster), else the Ceph client defaults ($CEPH_CONF, /etc/ceph/ceph.conf).
"""

from __future__ import annotations

import logging
from typing import Any

from lifeboat import ceph
from lifeboat.bounds import clip
from lifeboat.errors import AlreadyExists, NotFound
from lifeboat.model import CephRbdSource
from restored.targets import RbdTarget, TargetWriter

log = logging.getLogger("lifeboat.restored.rbd")

CONNECT_TIMEOUT = 10


class RbdWriter(TargetWriter):
    def __init__(
        self, target: RbdTarget, size: int, overwrite: bool, cluster: CephRbdSource | None
    ) -> None:
        self.description = target.key
        self.target = target
        self.created = False
        self.overwriting = False
        self.ioctx: Any = None
        self.image: Any = None
        rados, rbd = ceph.modules()
        self._rbd = rbd
        self.cluster = ceph.connect(
            cluster.conf if cluster else "",
            cluster.id if cluster else "",
            target.key,
            timeout=CONNECT_TIMEOUT,
        )
        try:
            try:
                self.ioctx = self.cluster.open_ioctx(target.pool)
            except rados.ObjectNotFound:
                raise NotFound(f"{clip(target.key)}: pool {target.pool} does not exist") from None
            self.image = self._open(size, overwrite)
        except BaseException:
            self._disconnect()
            raise

    def _open(self, size: int, overwrite: bool) -> Any:
        rbd, name = self._rbd, self.target.image
        try:
            image = rbd.Image(self.ioctx, name)
        except rbd.ImageNotFound:
            try:
                rbd.RBD().create(self.ioctx, name, size)
            except rbd.ImageExists:
                raise AlreadyExists(f"target {clip(self.target.key)} appeared meanwhile") from None
            self.created = True
            return rbd.Image(self.ioctx, name)
        if not overwrite:
            image.close()
            raise AlreadyExists(
                f"target {clip(self.target.key)} exists; ask for overwrite to replace its content"
            )
        self.overwriting = True
        if image.size() != size:
            image.resize(size)
        return image

    def write(self, offset: int, data: memoryview) -> None:
        written = self.image.write(data.tobytes(), offset)
        if written != len(data):
            raise OSError(f"{self.target.key}: short write at {offset}")

    def zero(self, offset: int, length: int) -> None:
        if self.overwriting:  # a new image reads as zeros wherever nothing was written
            self.image.write_zeroes(offset, length)

    def finish(self) -> None:
        self.image.flush()
        self.image.close()
        self.image = None
        self._disconnect()

    def abort(self) -> str:
        if self.image is not None:
            self.image.close()
            self.image = None
        left = ""
        if self.created:
            try:
                self._rbd.RBD().remove(self.ioctx, self.target.image)
            except Exception as error:
                log.warning("cannot remove %s after a failed restore: %s", self.description, error)
                left = f"image {self.description} is incomplete; remove it"
        else:
            left = f"image {self.description} is partially overwritten"
        self._disconnect()
        return left

    def _disconnect(self) -> None:
        if self.ioctx is not None:
            self.ioctx.close()
            self.ioctx = None
        self.cluster.shutdown()
