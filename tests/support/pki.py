"""Real certificates for tests: one CA for the fleet, one certificate per name, and the
config keys that turn TLS on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifeboat import certs
from lifeboat.config import TlsFiles
from lifeboat.security import ClientIdentity

HOST = "backup01"
SCHEDULER = "lifeboat-scheduler"
MONITOR = "lifeboat-monitor"
OPERATOR = "control-plane"
ADMIN = "ops-admin"
# A certificate from the fleet's CA whose name has no role.
NOBODY = "nobody"
ACCESS = {
    "monitor": [MONITOR],
    "scheduler": [SCHEDULER],
    "operator": [OPERATOR],
    "admin": [ADMIN],
}


@dataclass(frozen=True)
class Pki:
    ca: Path
    files: dict[str, TlsFiles]
    # The admin's name, signed by another CA.
    foreign: TlsFiles
    # The fleet's hosts, each with a certificate of its own name.
    hosts: tuple[str, ...] = (HOST,)

    def identity(self, name: str) -> ClientIdentity:
        files = self.files[name]
        return ClientIdentity(self.ca.read_bytes(), files.cert.read_bytes(), files.key.read_bytes())

    def foreign_identity(self) -> ClientIdentity:
        return ClientIdentity(
            self.ca.read_bytes(), self.foreign.cert.read_bytes(), self.foreign.key.read_bytes()
        )

    def config(self) -> dict[str, Any]:
        """The TLS keys of the fleet's config (one host unless made with more), to merge
        into its sections."""

        def tls(name: str) -> dict[str, str]:
            return {"cert": str(self.files[name].cert), "key": str(self.files[name].key)}

        return {
            "global": {"tls": {"ca": str(self.ca)}, "access": ACCESS},
            "scheduler": {"tls": tls(SCHEDULER)},
            "monitor": {"tls": tls(MONITOR)},
            "hosts": {host: {"tls": tls(host)} for host in self.hosts},
            "client": {"tls": tls(ADMIN)},
        }


def make_pki(directory: Path, hosts: tuple[str, ...] = (HOST,)) -> Pki:
    ca = certs.new_ca("lifeboat-test-ca")
    ca_path = certs.write(ca, directory, "ca").cert
    files = {
        name: certs.write(certs.issue(ca, name, ip_addresses=["127.0.0.1"]), directory, name)
        for name in (*hosts, SCHEDULER, MONITOR, OPERATOR, ADMIN, NOBODY)
    }
    intruder = certs.new_ca("intruder-ca")
    foreign = certs.write(
        certs.issue(intruder, ADMIN, ip_addresses=["127.0.0.1"]), directory, "foreign"
    )
    return Pki(ca_path, files, foreign, hosts)


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra`'s keys merged in, mappings recursively."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged
