"""Where restores write, behind one interface (see base.py): files, block devices and
Ceph RBD images.

A target is an absolute path (a regular file or a block device) or `rbd:POOL/IMAGE`.
It must lie under one of the host's `restore-targets` (absolute path prefixes, whole
path components, or `rbd:POOL`) and never inside the repository (paths.py). Nothing is
created before every check of `resolve_target` and `RestoreTarget.open` has passed.
"""

from __future__ import annotations

import os
import stat

from lifeboat.bounds import clip
from lifeboat.errors import InvalidArgument
from lifeboat.model import CephRbdSource
from restored.targets.base import RestoreTarget, TargetPolicy, TemporaryFile
from restored.targets.device import BlockDeviceTarget
from restored.targets.file import TEMPORARY_SUFFIX, FileTarget
from restored.targets.paths import RBD_PREFIX, check_allowed
from restored.targets.rbd import RbdImageTarget, resolve_rbd_target

__all__ = [
    "TEMPORARY_SUFFIX",
    "BlockDeviceTarget",
    "FileTarget",
    "RbdImageTarget",
    "RestoreTarget",
    "TargetPolicy",
    "TemporaryFile",
    "resolve_target",
]


def resolve_target(
    text: str, policy: TargetPolicy, cluster: CephRbdSource | None = None
) -> RestoreTarget:
    """The target `text` names, if the policy allows it (PermissionDenied otherwise); not
    opened yet. `cluster` is the Ceph cluster of an RBD target (None: the defaults)."""
    if not text:
        raise InvalidArgument("target", "required: an absolute path or rbd:POOL/IMAGE")
    if text.startswith(RBD_PREFIX):
        return resolve_rbd_target(text, policy, cluster)
    if not os.path.isabs(text) or "\0" in text:
        raise InvalidArgument(
            "target", f"expected an absolute path or rbd:POOL/IMAGE: {clip(text)}"
        )
    resolved = os.path.realpath(text)
    if resolved == "/":
        raise InvalidArgument("target", f"{clip(text)} is not a file or block device")
    check_allowed(resolved, policy)
    if _is_block_device(resolved):
        return BlockDeviceTarget(text, resolved, policy)
    return FileTarget(text, resolved, policy)


def _is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False  # opening it as a file says what is wrong
