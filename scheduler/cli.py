"""lifeboat-scheduler: starts backups on every host when their slots come."""

from __future__ import annotations

from lifeboat import daemon
from scheduler.server import serve

PROG = "lifeboat-scheduler"


def main(argv: list[str] | None = None) -> None:
    args = daemon.parser(
        PROG, "Stateless scheduler of the Lifeboat fleet.", worker=False
    ).parse_args(argv)
    daemon.setup_logging(args.log_level)
    config = daemon.load_config(PROG, args.config)
    daemon.run(PROG, lambda: serve(config, args.listen or config.scheduler_listen))


if __name__ == "__main__":
    main()
