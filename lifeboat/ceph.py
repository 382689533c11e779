"""Access to Ceph through Debian's python3-rados/python3-rbd modules, shared by the
RBD source (backupd) and the RBD restore target (restored)."""

from __future__ import annotations

from typing import Any

from lifeboat.errors import Unavailable

CONNECT_TIMEOUT = 30


def modules() -> tuple[Any, Any]:
    """The `rados` and `rbd` modules; Unavailable with the remedy when they are missing."""
    try:
        import rados
        import rbd
    except ImportError as error:
        raise Unavailable(
            f"the Ceph Python modules are not available ({error}); install python3-rbd "
            "python3-rados and run `make` to link them into the virtualenv"
        ) from None
    return rados, rbd


def connect(conf: str, client_id: str, label: str, timeout: int = CONNECT_TIMEOUT) -> Any:
    """A connected cluster handle (`conf`/`client_id` empty: the client defaults)."""
    rados, _ = modules()
    cluster = rados.Rados(conffile=conf or "", rados_id=client_id or None)
    try:
        cluster.connect(timeout=timeout)
    except rados.Error as error:
        raise Unavailable(f"{label}: cannot connect to the Ceph cluster: {error}") from None
    return cluster
