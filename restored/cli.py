"""lifeboat-restored: the restore worker of one backup host."""

from __future__ import annotations

from lifeboat import daemon
from restored.server import serve

PROG = "lifeboat-restored"


def main(argv: list[str] | None = None) -> None:
    args = daemon.parser(PROG, "Restore worker of one backup host.", worker=True).parse_args(argv)
    daemon.setup_logging(args.log_level)
    config = daemon.load_config(PROG, args.config)
    host = daemon.pick_host(PROG, config, args.host)
    daemon.run(PROG, lambda: serve(config, host.name, args.listen or host.restored))


if __name__ == "__main__":
    main()
