"""check_lifeboat: the Nagios plugin. Asks the monitor's CheckSla and prints its answer.

Follows the Monitoring Plugins guidelines: one line of output (`LIFEBOAT STATE -
summary | perfdata`), exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, `-H`, `-t`,
`-V`; bad usage, an unreachable monitor or a late answer are UNKNOWN.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

import grpc

from lifeboat.v1 import monitor_pb2, monitor_pb2_grpc

if TYPE_CHECKING:
    from lifeboat.config import Config
    from lifeboat.security import ClientIdentity

PROG = "check_lifeboat"
VERSION = "0.1.0"
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
DEFAULT_TIMEOUT = 10.0
# As in lifeboat.config (DEFAULT_MONITOR, CONFIG_VARIABLE), which a plain `-H` run
# does not import: every millisecond of a plugin run counts.
DEFAULT_PORT = 9413
CONFIG_VARIABLE = "LIFEBOAT_CONFIG"
# The monitor listening on every address is asked on the loopback one.
WILDCARDS = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}


class PluginExit(Exception):
    def __init__(self, code: int, line: str) -> None:
        super().__init__(line)
        self.code = code
        self.line = line


def unknown(message: str) -> PluginExit:
    return PluginExit(UNKNOWN, f"LIFEBOAT UNKNOWN - {message}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # Bad usage is UNKNOWN (3), not argparse's 2 (which Nagios would read as CRITICAL).
        self.print_usage(sys.stderr)
        print(f"LIFEBOAT UNKNOWN - {message}")
        raise SystemExit(UNKNOWN)


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0 and 3600 seconds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Nagios plugin: is every Lifeboat job within its SLA?",
        epilog="Exit status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
    )
    parser.add_argument(
        "-H",
        "--hostname",
        metavar="ADDR",
        help="monitor address HOST[:PORT] (default: monitor.listen of --config, "
        f"else 127.0.0.1:{DEFAULT_PORT})",
    )
    parser.add_argument("-p", "--port", type=int, help=f"monitor port (default {DEFAULT_PORT})")
    parser.add_argument(
        "-t",
        "--timeout",
        type=_timeout,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"seconds to wait for the monitor (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("--job", default="", help="check only this job (one service per VM)")
    parser.add_argument("--host", default="", help="check only the jobs of this backup host")
    parser.add_argument("--config", help=f"fleet config file (default: ${CONFIG_VARIABLE})")
    parser.add_argument("--tls-cert", metavar="FILE", help="client certificate (PEM)")
    parser.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    parser.add_argument("--tls-ca", metavar="FILE", help="CA to verify the monitor against")
    parser.add_argument("-V", "--version", action="version", version=f"{PROG} {VERSION}")
    return parser


def with_port(address: str, port: int | None) -> str:
    """HOST, HOST:PORT, an IPv6 address or [IPv6]:PORT -> something grpc can dial."""
    host, colon, tail = address.rpartition(":")
    bracketed_or_plain = address.startswith("[") or address.count(":") == 1
    if colon and tail.isdigit() and bracketed_or_plain:
        host = WILDCARDS.get(host, host)
        return f"{host}:{port if port is not None else tail}"
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    return f"{WILDCARDS.get(address, address)}:{port if port is not None else DEFAULT_PORT}"


def configured(path: str | None) -> Config:
    """The fleet config, validated like `config.load`.

    Reads YAML with libyaml's loader where available (the pure-Python one needs ~0.4s
    for a fleet of 1,000 jobs).
    """
    import yaml

    from lifeboat import config as config_module
    from lifeboat.errors import ConfigError

    try:
        resolved = config_module.resolve_path(path)
        try:
            text = Path(resolved).read_text()
        except OSError as error:
            raise ConfigError(resolved, "(file)", error.strerror or str(error)) from None
        try:
            document = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError as error:
            raise ConfigError(resolved, "(syntax)", str(error).replace("\n", " ")) from None
        return config_module.parse(document, resolved)
    except ConfigError as error:
        raise unknown(f"invalid config: {error}") from None


def config_of(args: argparse.Namespace) -> Config | None:
    """The config when one is named (--config or $LIFEBOAT_CONFIG); a plain -H run reads none."""
    if args.config or os.environ.get(CONFIG_VARIABLE):
        return configured(args.config)
    return None


def monitor_address(args: argparse.Namespace, config: Config | None) -> str:
    if args.hostname:
        return with_port(args.hostname, args.port)
    if config is not None:
        return with_port(config.monitor_listen, args.port)
    return with_port("127.0.0.1", args.port)


def identity_of(args: argparse.Namespace, config: Config | None) -> ClientIdentity | None:
    if not (config or args.tls_cert or args.tls_key or args.tls_ca):
        return None
    from lifeboat.errors import ConfigError
    from lifeboat.security import command_line_identity

    try:
        return command_line_identity(config, args.tls_cert, args.tls_key, args.tls_ca)
    except ConfigError as error:
        raise unknown(f"invalid TLS settings: {error}") from None


def ask(
    address: str, identity: ClientIdentity | None, job: str, host: str, timeout: float
) -> monitor_pb2.CheckSlaResponse:
    from lifeboat import client

    request = monitor_pb2.CheckSlaRequest(job=job, host=host)
    with client.channel(address, identity) as channel:
        stub = monitor_pb2_grpc.MonitorServiceStub(channel)
        try:
            return stub.CheckSla(request, timeout=timeout)
        except grpc.RpcError as error:
            raise _rpc_failure(error, address, timeout) from None


def _rpc_failure(error: grpc.RpcError, address: str, timeout: float) -> PluginExit:
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (error.details() if isinstance(error, grpc.Call) else "") or str(code)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return unknown(f"the monitor at {address} did not answer within {timeout:g}s")
    if code == grpc.StatusCode.UNAVAILABLE:
        return unknown(f"cannot reach the monitor at {address}: {details}")
    if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
        return unknown(details)
    return unknown(f"the monitor at {address} failed: {code.name}: {details}")


def result_of(reply: monitor_pb2.CheckSlaResponse) -> PluginExit:
    if reply.exit_code not in (OK, WARNING, CRITICAL, UNKNOWN) or not reply.summary:
        return unknown(f"the monitor gave an invalid answer (exit code {reply.exit_code})")
    line = f"{reply.summary} | {reply.perfdata}" if reply.perfdata else reply.summary
    return PluginExit(reply.exit_code, line)


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    print("LIFEBOAT UNKNOWN - check_lifeboat timed out")
    sys.stdout.flush()
    os._exit(UNKNOWN)


def run(argv: list[str] | None) -> PluginExit:
    args = build_parser().parse_args(argv)
    # A safety net: whatever hangs (name resolution, ...), the plugin ends in time.
    alarm = threading.current_thread() is threading.main_thread()
    if alarm:
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(int(args.timeout) + 2)
    try:
        config = config_of(args)
        address = monitor_address(args, config)
        identity = identity_of(args, config)
        return result_of(ask(address, identity, args.job, args.host, args.timeout))
    except PluginExit as outcome:
        return outcome
    finally:
        if alarm:
            signal.alarm(0)


def main(argv: list[str] | None = None) -> int:
    outcome = run(argv)
    print(outcome.line)
    return outcome.code


if __name__ == "__main__":
    raise SystemExit(main())
