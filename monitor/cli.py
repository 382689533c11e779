"""lifeboat-monitor: aggregates SLA state for Nagios."""

from __future__ import annotations

from lifeboat import daemon
from monitor.server import serve

PROG = "lifeboat-monitor"


def main(argv: list[str] | None = None) -> None:
    args = daemon.parser(PROG, "SLA monitor of the Lifeboat fleet.", worker=False).parse_args(argv)
    daemon.setup_logging(args.log_level)
    config = daemon.load_config(PROG, args.config)
    daemon.run(PROG, lambda: serve(config, args.listen or config.monitor_listen))


if __name__ == "__main__":
    main()
