"""`lifeboat`: the admin client. Each area adds its subcommands from its own module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from lifeboat import config as config_module
from lifeboat.errors import ConfigError, LifeboatError
from lifeboat.security import command_line_identity

# Modules that register subcommands: each has `register(subparsers)`; a subcommand
# sets `func(args, config) -> int` as its default, and `needs_identity=False` when it
# calls no server (so it runs before the TLS files of the config exist).
AREAS = (
    "lifeboat.admin.backup",
    "lifeboat.admin.status",
    "lifeboat.admin.jobs",
    "lifeboat.admin.restore",
    "lifeboat.admin.tls",
)

EXIT_FAILURE = 1
EXIT_USAGE = 2


def add_tls_options(parser: argparse.ArgumentParser) -> None:
    """--tls-cert/--tls-key/--tls-ca: the client certificate, overriding `client.tls`."""
    parser.add_argument("--tls-cert", metavar="FILE", help="client certificate (PEM)")
    parser.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    parser.add_argument("--tls-ca", metavar="FILE", help="CA to verify servers against")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lifeboat", description="Lifeboat admin client.")
    parser.add_argument(
        "--config", help=f"fleet config file (default: ${config_module.CONFIG_VARIABLE})"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    add_tls_options(parser)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for area in AREAS:
        module = __import__(area, fromlist=["register"])
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace, config_module.Config], int] = args.func
    try:
        config = config_module.load(args.config)
        if getattr(args, "needs_identity", True):
            args.identity = command_line_identity(config, args.tls_cert, args.tls_key, args.tls_ca)
        code = func(args, config)
    except ConfigError as error:
        print(f"lifeboat: invalid config: {error}", file=sys.stderr)
        code = EXIT_USAGE
    except LifeboatError as error:
        print(f"lifeboat: {error}", file=sys.stderr)
        code = EXIT_FAILURE
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)
