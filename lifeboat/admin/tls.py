"""Admin subcommand `lifeboat tls init`: a CA and every certificate the fleet needs.

Writes the files and prints the config lines that use them; it needs no certificate
itself, so it runs before the config has TLS (or before its files exist).
"""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path
from typing import Any

import yaml

from lifeboat import certs
from lifeboat.access import Role
from lifeboat.config import Config, TlsFiles, check_name
from lifeboat.errors import AlreadyExists, ConfigError

EXIT_OK = 0

DEFAULT_NAMES = {
    Role.MONITOR: "lifeboat-monitor",
    Role.SCHEDULER: "lifeboat-scheduler",
    Role.OPERATOR: "control-plane",
    Role.ADMIN: "ops-admin",
}
CA_STEM = "ca"
_WILDCARDS = {"", "0.0.0.0", "::"}
# A daemon listening on every address is dialled at loopback on its own machine; from
# elsewhere, only a host's name (its certificate's CN) is covered.
_WILDCARD_SAN = "127.0.0.1"


def register(subparsers: Any) -> None:
    tls = subparsers.add_parser("tls", help="certificates of the fleet")
    actions = tls.add_subparsers(dest="tls_command", required=True, metavar="ACTION")
    init = actions.add_parser(
        "init", help="make a CA and a certificate for every daemon and two clients"
    )
    # SUPPRESS: without it, this option's default would replace a --config given before `tls`.
    init.add_argument("--config", default=argparse.SUPPRESS, help="fleet config file")
    init.add_argument("--out", required=True, type=Path, metavar="DIR", help="where to write")
    init.add_argument(
        "--force", action="store_true", help="replace an existing CA (and every certificate)"
    )
    init.set_defaults(func=run_init, needs_identity=False)


def _document(config: Config) -> dict[str, Any]:
    """The config as written: the parsed one keeps each role's names as a set, unordered."""
    return yaml.safe_load(Path(config.path).read_text()) or {}


def role_names(document: dict[str, Any]) -> dict[Role, list[str]]:
    """The names of each role in the config's order; a default name for a role with none.
    The first name of a role is the one its certificate gets."""
    access = (document.get("global") or {}).get("access") or {}
    return {role: list(access.get(role.label) or [DEFAULT_NAMES[role]]) for role in Role}


def alternative_names(address: str) -> tuple[list[str], list[str]]:
    """The (DNS, IP) names a client dialling HOST:PORT verifies the certificate against."""
    host = address.rpartition(":")[0].strip("[]")
    if host in _WILDCARDS:
        return [], [_WILDCARD_SAN]
    try:
        return [], [str(ipaddress.ip_address(host))]
    except ValueError:
        return [host], []


def _issue(ca: certs.Pem, name: str, addresses: list[str]) -> certs.Pem:
    dns: list[str] = []
    ips: list[str] = []
    for address in addresses:
        more_dns, more_ips = alternative_names(address)
        dns += more_dns
        ips += more_ips
    return certs.issue(ca, name, dns, ips)


def _check_file_names(config: Config, names: dict[Role, list[str]]) -> None:
    """Each certificate's files are named after it: a safe name, and no two the same."""
    for role in Role:
        check_name(names[role][0], config.path, f"global.access.{role.label}")
    stems = [CA_STEM, *config.hosts, *(names[role][0] for role in Role)]
    clashes = sorted({stem for stem in stems if stems.count(stem) > 1})
    if clashes:
        raise ConfigError(
            config.path,
            "hosts",
            f"{', '.join(clashes)}: a host name, the first name of a role and "
            f"{CA_STEM!r} name the certificate files, so they must all differ",
        )


def _tls(files: TlsFiles) -> dict[str, str]:
    return {"cert": str(files.cert), "key": str(files.key)}


def snippet(
    config: Config,
    names: dict[Role, list[str]],
    ca: Path,
    servers: dict[str, TlsFiles],
    client: TlsFiles,
    implicit_host: bool,
) -> dict[str, Any]:
    """The config keys that use the new files, as a YAML document to merge."""
    hosts: dict[str, Any] = {}
    for name, host in config.hosts.items():
        hosts[name] = {"tls": _tls(servers[name])}
        if implicit_host:  # the config had no hosts: the default one must be spelled out
            hosts[name] = {"backupd": host.backupd, "restored": host.restored, **hosts[name]}
    return {
        "global": {
            "tls": {"ca": str(ca)},
            "access": {role.label: names[role] for role in Role},
        },
        "scheduler": {"tls": _tls(servers["scheduler"])},
        "monitor": {"tls": _tls(servers["monitor"])},
        "hosts": hosts,
        "client": {"tls": _tls(client)},
    }


def run_init(args: argparse.Namespace, config: Config) -> int:
    out: Path = args.out.absolute()
    if (out / f"{CA_STEM}.key").exists() and not args.force:
        raise AlreadyExists(
            f"{out / CA_STEM}.key exists: the fleet may trust this CA; "
            "pass --force to replace it and every certificate it signed"
        )
    document = _document(config)
    names = role_names(document)
    _check_file_names(config, names)
    ca = certs.new_ca()
    ca_files = certs.write(ca, out, CA_STEM)
    servers = {
        name: certs.write(_issue(ca, name, [host.backupd, host.restored]), out, name)
        for name, host in config.hosts.items()
    }
    for key, role, listen in (
        ("scheduler", Role.SCHEDULER, config.scheduler_listen),
        ("monitor", Role.MONITOR, config.monitor_listen),
    ):
        name = names[role][0]
        servers[key] = certs.write(_issue(ca, name, [listen]), out, name)
    clients = {
        role: certs.write(certs.issue(ca, names[role][0]), out, names[role][0])
        for role in (Role.ADMIN, Role.OPERATOR)
    }
    lines = snippet(
        config, names, ca_files.cert, servers, clients[Role.ADMIN], not document.get("hosts")
    )
    print(f"# Wrote the CA and certificates to {out}. Add to {config.path}:")
    print(yaml.safe_dump(lines, sort_keys=False, default_flow_style=None), end="")
    print(f"# {clients[Role.OPERATOR].cert} is for the control plane (role operator).")
    return EXIT_OK
