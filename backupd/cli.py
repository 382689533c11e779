"""lifeboat-backupd: the backup worker of one backup host."""

from __future__ import annotations

from backupd.server import serve
from lifeboat import daemon

PROG = "lifeboat-backupd"


def main(argv: list[str] | None = None) -> None:
    args = daemon.parser(PROG, "Backup worker of one backup host.", worker=True).parse_args(argv)
    daemon.setup_logging(args.log_level)
    config = daemon.load_config(PROG, args.config)
    host = daemon.pick_host(PROG, config, args.host)
    daemon.run(PROG, lambda: serve(config, host.name, args.listen or host.backupd))


if __name__ == "__main__":
    main()
