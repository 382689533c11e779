"""lifeboat-restored: the restore worker of one backup host."""

from __future__ import annotations

from lifeboat import daemon
from restored.server import serve

PROG = "lifeboat-restored"


def main(argv: list[str] | None = None) -> None:
    daemon.worker_main(
        PROG, "Restore worker of one backup host.", argv, serve, lambda host: host.restored
    )


if __name__ == "__main__":
    main()
