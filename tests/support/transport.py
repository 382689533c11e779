"""One end-to-end story, two transports: a test that takes the `transport` fixture runs in
plaintext and again over mTLS with real certificates, from the same config."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lifeboat import client
from lifeboat.security import ClientIdentity
from tests.support.pki import ADMIN, Pki, make_pki, merge

Config = Mapping[str, Any] | str


class Transport:
    """How a story reaches its daemons. Over mTLS its config gets the TLS keys of a fleet
    whose hosts are the config's own, and test-side calls present the admin's certificate;
    in plaintext nothing changes."""

    def __init__(self, tls: bool, directory: Path) -> None:
        self.tls = tls
        self._directory = directory
        self._pki: Pki | None = None

    @property
    def pki(self) -> Pki:
        assert self._pki is not None, "secure() the config first: it names the hosts"
        return self._pki

    def secure(self, config: Config) -> dict[str, Any]:
        """`config` (a mapping or YAML text) with the TLS keys merged in over mTLS."""
        plain: dict[str, Any] = yaml.safe_load(config) if isinstance(config, str) else {**config}
        if not self.tls:
            return plain
        hosts = tuple(plain.get("hosts") or {})
        if self._pki is None:
            self._pki = make_pki(self._directory, hosts)
        assert set(hosts) <= set(self._pki.hosts), f"hosts {hosts} have no certificates"
        return merge(plain, self._pki.config())

    def write(self, path: Path, config: Config) -> Path:
        """Write `config` to `path` as `secure` makes it (YAML text as given in plaintext)."""
        if isinstance(config, str) and not self.tls:
            path.write_text(config)
        else:
            path.write_text(yaml.safe_dump(self.secure(config)))
        return path

    def identity(self, name: str = ADMIN) -> ClientIdentity | None:
        """What a test-side channel presents: `name`'s certificate over mTLS, else none."""
        return self.pki.identity(name) if self.tls else None

    def grpcurl_flags(self, name: str = ADMIN) -> list[str]:
        if not self.tls:
            return ["-plaintext"]
        files = self.pki.files[name]
        return ["-cacert", str(self.pki.ca), "-cert", str(files.cert), "-key", str(files.key)]

    def assert_served(self, address: str) -> None:
        """The daemon at `address` truly speaks this transport: a plaintext health check is
        answered in plaintext and fails the handshake (UNAVAILABLE) over mTLS."""
        with client.channel(address, None) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.RpcError as error:
                assert self.tls, f"plaintext {address}: {error}"
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                return
        assert not self.tls, f"{address} answered plaintext over mTLS"
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(params=[False, True], ids=["plaintext", "mtls"])
def tls(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def transport(tls: bool, tmp_path: Path) -> Transport:
    return Transport(tls, tmp_path / "tls")
