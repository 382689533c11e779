"""A Ceph RBD image target (`rbd:POOL/IMAGE`), written through librbd.

A new image is created at the revision's size when the restore opens it (which claims
the name) and removed again if the restore fails. An existing image is written only
with overwrite: it is resized to the revision's size and holes are zeroed, so it ends
byte-identical to the revision; a failed restore leaves it partially overwritten.

The cluster is the one of the job's own ceph-rbd source when it has one (restoring a
Ceph VM to its cluster), else the Ceph client defaults ($CEPH_CONF, /etc/ceph/ceph.conf).
"""

from __future__ import annotations

import errno
import logging
import os
import re
from typing import Any

from lifeboat import blockio, ceph
from lifeboat.bounds import clip
from lifeboat.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from lifeboat.model import CephRbdSource
from restored.targets.base import RestoreTarget, TargetPolicy, describe_allowed
from restored.targets.paths import RBD_PREFIX

log = logging.getLogger("lifeboat.restored.rbd")

CONNECT_TIMEOUT = 10
_RBD_TARGET = re.compile(r"rbd:([A-Za-z0-9_.-]+)/([A-Za-z0-9_.+-]+)")


def resolve_rbd_target(
    text: str, policy: TargetPolicy, cluster: CephRbdSource | None
) -> RbdImageTarget:
    """The image `text` (rbd:POOL/IMAGE) names, if its pool is in `restore-targets`."""
    match = _RBD_TARGET.fullmatch(text)
    if match is None:
        raise InvalidArgument("target", f"expected rbd:POOL/IMAGE, got {clip(text)}")
    pool, image = match[1], match[2]
    if f"{RBD_PREFIX}{pool}" not in policy.allowed:
        raise PermissionDenied(
            f"target {clip(text)}: pool {clip(pool)} is not in the restore-targets "
            f"of host {policy.host} ({describe_allowed(policy.allowed)})"
        )
    return RbdImageTarget(text, pool, image, cluster)


class RbdImageTarget(RestoreTarget):
    kind = "RBD image"

    def __init__(self, text: str, pool: str, image: str, cluster: CephRbdSource | None) -> None:
        self.text = text
        self.pool = pool
        self.image_name = image
        self.key = f"{RBD_PREFIX}{pool}/{image}"
        self.cluster_source = cluster
        self.created = False
        self.overwriting = False
        self.cluster: Any = None
        self.ioctx: Any = None
        self.image: Any = None
        self._rbd: Any = None

    def describe(self) -> str:
        return f"{self.kind} {self.key}"

    def open(self, size: int, overwrite: bool) -> None:
        rados, self._rbd = ceph.modules()
        source = self.cluster_source
        self.cluster = ceph.connect(
            source.conf if source else "",
            source.id if source else "",
            self.key,
            timeout=CONNECT_TIMEOUT,
        )
        try:
            try:
                self.ioctx = self.cluster.open_ioctx(self.pool)
            except rados.ObjectNotFound:
                raise NotFound(f"{clip(self.key)}: pool {self.pool} does not exist") from None
            self.image = self._open_image(size, overwrite)
        except BaseException:
            self._disconnect()
            raise

    def _open_image(self, size: int, overwrite: bool) -> Any:
        rbd, name = self._rbd, self.image_name
        try:
            image = rbd.Image(self.ioctx, name)
        except rbd.ImageNotFound:
            try:
                rbd.RBD().create(self.ioctx, name, size)
            except rbd.ImageExists:
                raise AlreadyExists(f"target {clip(self.key)} appeared meanwhile") from None
            self.created = True
            return rbd.Image(self.ioctx, name)
        if not overwrite:
            image.close()
            raise AlreadyExists(
                f"target {clip(self.key)} exists; ask for overwrite to replace its content"
            )
        self.overwriting = True
        if image.size() != size:
            image.resize(size)
        return image

    def write(self, offset: int, data: memoryview) -> None:
        try:
            written = self.image.write(data.tobytes(), offset)
        except self._rbd.Error as error:
            raise blockio.failed_at(self._os_error(error), offset) from error
        if written != len(data):
            short = OSError(errno.EIO, f"short write ({written} of {len(data)} bytes)")
            raise blockio.failed_at(short, offset, self.key)

    def zero(self, offset: int, length: int) -> None:
        if not self.overwriting:  # a new image reads as zeros wherever nothing was written
            return
        try:
            self.image.write_zeroes(offset, length)
        except self._rbd.Error as error:
            raise blockio.failed_at(self._os_error(error), offset) from error

    def _os_error(self, error: Exception) -> OSError:
        """A librbd error as the OSError it stands for, naming the image."""
        number = getattr(error, "errno", None) or errno.EIO
        return OSError(number, os.strerror(number), self.key)

    def finish(self) -> None:
        try:
            self.image.flush()
        except self._rbd.Error as error:
            raise self._os_error(error) from error
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
                self._rbd.RBD().remove(self.ioctx, self.image_name)
            except Exception as error:
                log.warning("cannot remove %s after a failed restore: %s", self.key, error)
                left = f"image {self.key} is incomplete; remove it"
        else:
            left = f"image {self.key} is partially overwritten"
        self._disconnect()
        return left

    def _disconnect(self) -> None:
        if self.ioctx is not None:
            self.ioctx.close()
            self.ioctx = None
        if self.cluster is not None:
            self.cluster.shutdown()
            self.cluster = None
