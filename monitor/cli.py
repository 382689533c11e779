"""lifeboat-monitor: aggregates SLA state for Nagios."""

from __future__ import annotations

from lifeboat import daemon
from monitor.server import serve

PROG = "lifeboat-monitor"


def main(argv: list[str] | None = None) -> None:
    parser = daemon.parser(PROG, "SLA monitor of the Lifeboat fleet.", worker=False)
    parser.add_argument(
        "--http", help="HOST:PORT for /check and /metrics (default: monitor.http of the config)"
    )
    args = parser.parse_args(argv)
    daemon.setup_logging(args.log_level)
    config = daemon.load_config(PROG, args.config)
    daemon.run(PROG, lambda: serve(config, args.listen or config.monitor_listen, args.http))


if __name__ == "__main__":
    main()
