"""lifeboat-backupd: the backup worker of one backup host."""

from __future__ import annotations

from backupd.server import serve
from lifeboat import daemon

PROG = "lifeboat-backupd"


def main(argv: list[str] | None = None) -> None:
    daemon.worker_main(
        PROG, "Backup worker of one backup host.", argv, serve, lambda host: host.backupd
    )


if __name__ == "__main__":
    main()
