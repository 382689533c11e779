"""Transport security of every Lifeboat connection: mTLS credentials and caller identity.

With `global.tls` set, servers require a client certificate signed by the CA and
clients verify the server's certificate against the CA and the address they dial.
Without it, servers listen on loopback only and every caller is `local` with the
admin role.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc

from lifeboat.access import LOCAL_CALLER, Access, Caller, Role
from lifeboat.bounds import ECHO_LIMIT, clip
from lifeboat.config import Config, ServerSecurity, TlsFiles
from lifeboat.errors import ConfigError

log = logging.getLogger("lifeboat.security")


def _read(config_path: str, key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(config_path, key, f"{path}: {error.strerror or error}") from None


@dataclass(frozen=True)
class ClientIdentity:
    """What a client presents and trusts: PEM bytes, read once."""

    ca: bytes
    cert: bytes
    key: bytes

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def _identity(
    config_path: str, ca: Path | None, tls: TlsFiles | None, ca_key: str, tls_key: str
) -> ClientIdentity | None:
    if ca is None and tls is None:
        return None
    if ca is None:
        raise ConfigError(config_path, ca_key, "required to use a client certificate")
    if tls is None:
        raise ConfigError(config_path, tls_key, "required when global.tls is set")
    # `client.tls` names `client.tls.cert`; the command line's `--tls` names `--tls-cert`.
    join = "-" if tls_key.startswith("--") else "."
    return ClientIdentity(
        ca=_read(config_path, ca_key, ca),
        cert=_read(config_path, f"{tls_key}{join}cert", tls.cert),
        key=_read(config_path, f"{tls_key}{join}key", tls.key),
    )


def daemon_identity(config: Config, section: ServerSecurity) -> ClientIdentity | None:
    """What a daemon presents when it calls others: its own server certificate."""
    return _identity(
        config.path, config.security.ca, section.tls, "global.tls.ca", f"{section.key}.tls"
    )


def command_line_identity(
    config: Config | None, cert: str | None, key: str | None, ca: str | None
) -> ClientIdentity | None:
    """What `lifeboat` and `check_lifeboat` present: --tls-cert/--tls-key/--tls-ca, else
    the config's `client.tls` and `global.tls.ca`; None (plaintext) when neither says."""
    path = config.path if config is not None else "(command line)"
    if bool(cert) != bool(key):
        raise ConfigError(path, "--tls-cert", "--tls-cert and --tls-key go together")
    tls = config.security.client_tls if config is not None else None
    tls_key = "client.tls"
    if cert and key:
        tls, tls_key = TlsFiles(Path(cert).absolute(), Path(key).absolute()), "--tls"
    ca_path = config.security.ca if config is not None else None
    ca_key = "global.tls.ca"
    if ca:
        ca_path, ca_key = Path(ca).absolute(), "--tls-ca"
    return _identity(path, ca_path, tls, ca_key, tls_key)


def is_loopback(address: str) -> bool:
    """Whether HOST:PORT only accepts connections from this machine."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerTls:
    """A server's certificate, re-read on reload: new handshakes use the new files."""

    def __init__(self, config: Config, section: ServerSecurity) -> None:
        self._lock = threading.Lock()
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self.credentials = grpc.dynamic_ssl_server_credentials(
            self._configuration(config, section),
            cast(Any, self._fetch),  # grpc's stub forgets that None means "no change"
            require_client_authentication=True,
        )

    @staticmethod
    def _configuration(
        config: Config, section: ServerSecurity
    ) -> grpc.ServerCertificateConfiguration:
        tls = section.tls
        assert tls is not None and config.security.ca is not None
        ca = _read(config.path, "global.tls.ca", config.security.ca)
        cert = _read(config.path, f"{section.key}.tls.cert", tls.cert)
        key = _read(config.path, f"{section.key}.tls.key", tls.key)
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def reload(self, config: Config, section: ServerSecurity) -> None:
        configuration = self._configuration(config, section)
        with self._lock:
            self._pending = configuration


class Guard:
    """Who a server lets in: its TLS (None: plaintext loopback) and the roles of names."""

    def __init__(self, tls: ServerTls | None, access: Access) -> None:
        self.tls = tls
        self.access = access

    def caller(self, auth_context: Mapping[str, Iterable[bytes]]) -> Caller:
        if self.tls is None:
            return Caller(LOCAL_CALLER, Role.ADMIN)
        common = [n.decode(errors="replace") for n in auth_context.get("x509_common_name", [])]
        alternative = [
            n.decode(errors="replace")
            for n in auth_context.get("x509_subject_alternative_name", [])
        ]
        names = common + alternative
        # Shown in replies and audit lines: a SAN may be long, so it is cut like any input.
        shown = names[0] if names else "(unnamed)"
        if len(shown) > ECHO_LIMIT or not shown.isprintable():
            shown = clip(shown)
        return Caller(shown, self.access.role_of(names))

    def reload(self, config: Config, section: ServerSecurity) -> None:
        """New roles at once; new certificate files for new connections."""
        if (self.tls is None) != (not config.security.enabled):
            log.warning("switching TLS on or off needs a restart; keeping the current mode")
        elif self.tls is not None:
            self.tls.reload(config, section)
        self.access = Access(config.security.access)


def guard_for(
    config: Config, section: ServerSecurity, listen: str, configured: tuple[str, str]
) -> Guard:
    """The guard of a server of `section`, or ConfigError when it may not listen on `listen`.
    `configured` is the config's (key, address) that --listen may have overridden."""
    key, address = configured
    listen_key = key if listen == address else "--listen"
    if config.security.enabled:
        if section.tls is None:
            raise ConfigError(config.path, f"{section.key}.tls", "required when global.tls is set")
        return Guard(ServerTls(config, section), Access(config.security.access))
    if not is_loopback(listen):
        if not section.insecure:
            raise ConfigError(
                config.path,
                listen_key,
                f"{listen} is not a loopback address and global.tls is not set: "
                f"configure TLS, or write 'insecure: true' in {section.key}",
            )
        log.warning(
            "%s: serving plaintext on %s without authentication (insecure: true in %s); "
            "every caller is admin",
            config.path,
            listen,
            section.key,
        )
    return Guard(None, Access(config.security.access))
