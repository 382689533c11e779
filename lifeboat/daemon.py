"""What every daemon's cli.py shares: arguments, logging, config loading, running."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from lifeboat import config as config_module
from lifeboat.errors import ConfigError, LifeboatError

EXIT_CONFIG_ERROR = 2
EXIT_FAILURE = 1


def parser(prog: str, description: str, worker: bool) -> argparse.ArgumentParser:
    """Arguments every daemon takes; workers also take --host."""
    result = argparse.ArgumentParser(prog=prog, description=description)
    result.add_argument(
        "--config",
        help=f"fleet config file (default: ${config_module.CONFIG_VARIABLE})",
    )
    if worker:
        result.add_argument(
            "--host",
            help="the backup host this worker serves (default: the only host in the config)",
        )
    result.add_argument("--listen", help="HOST:PORT to listen on (default: from the config)")
    result.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    return result


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def load_config(prog: str, path: str | None) -> config_module.Config:
    """Load the config or exit non-zero with a message naming file, key and problem."""
    try:
        return config_module.load(path)
    except ConfigError as error:
        print(f"{prog}: invalid config: {error}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR) from None


def pick_host(
    prog: str, config: config_module.Config, name: str | None
) -> config_module.HostConfig:
    """The host a worker serves: --host, or the only host of the config."""
    if name is None:
        if len(config.hosts) != 1:
            choices = ", ".join(sorted(config.hosts))
            print(f"{prog}: --host is required (hosts: {choices})", file=sys.stderr)
            raise SystemExit(EXIT_CONFIG_ERROR)
        name = next(iter(config.hosts))
    if name not in config.hosts:
        print(
            f"{prog}: invalid config: {config.path}: hosts: no host named {name!r}", file=sys.stderr
        )
        raise SystemExit(EXIT_CONFIG_ERROR)
    return config.hosts[name]


def run(prog: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a daemon's main coroutine; domain errors at start-up exit non-zero with a message."""
    try:
        asyncio.run(main())
    except ConfigError as error:
        print(f"{prog}: invalid config: {error}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR) from None
    except LifeboatError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        raise SystemExit(EXIT_FAILURE) from None
    except KeyboardInterrupt:
        pass


def worker_main(
    prog: str,
    description: str,
    argv: list[str] | None,
    serve: Callable[[config_module.Config, str, str], Coroutine[Any, Any, None]],
    address_of: Callable[[config_module.HostConfig], str],
) -> None:
    """The whole `main` of a host worker: arguments, logging, config, host, serve."""
    args = parser(prog, description, worker=True).parse_args(argv)
    setup_logging(args.log_level)
    config = load_config(prog, args.config)
    host = pick_host(prog, config, args.host)
    run(prog, lambda: serve(config, host.name, args.listen or address_of(host)))
