"""Certificates of `lifeboat.certs` pass a real grpc mTLS handshake (and foreign ones do
not)."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from lifeboat import certs, config


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def health_check(
    server_pem: certs.Pem, trusted_by_server: certs.Pem, client_pem: certs.Pem, ca: certs.Pem
) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    """One health check over mTLS on 127.0.0.1: the server trusts `trusted_by_server`,
    the client presents `client_pem` and trusts `ca`."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    credentials = grpc.ssl_server_credentials(
        [(server_pem.key, server_pem.cert)],
        root_certificates=trusted_by_server.cert,
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        channel_credentials = grpc.ssl_channel_credentials(ca.cert, client_pem.key, client_pem.cert)
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            return reply.status
    finally:
        await server.stop(None)


async def test_issued_certificates_pass_a_grpc_mtls_handshake() -> None:
    ca = certs.new_ca()
    server = certs.issue(ca, "backup01", ip_addresses=["127.0.0.1"])
    client = certs.issue(ca, "ops-admin")
    status = await health_check(server, ca, client, ca)
    assert status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("foreign", ["client certificate", "server certificate", "address"])
async def test_a_certificate_the_peer_cannot_verify_is_refused(foreign: str) -> None:
    ca, other_ca = certs.new_ca(), certs.new_ca("other-ca")
    server_ca = other_ca if foreign == "server certificate" else ca
    ips = [] if foreign == "address" else ["127.0.0.1"]
    server = certs.issue(server_ca, "backup01", ip_addresses=ips)
    client = certs.issue(other_ca if foreign == "client certificate" else ca, "ops-admin")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await health_check(server, ca, client, ca)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_issued_certificate_names_and_uses(tmp_path: Path) -> None:
    ca = certs.new_ca()
    pem = certs.issue(ca, "backup01", ["backup01.example.net"], ["10.0.0.11", "::1"])
    cert = x509.load_pem_x509_certificate(pem.cert)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["backup01", "backup01.example.net"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.11"),
        ipaddress.ip_address("::1"),
    ]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {
        x509.ExtendedKeyUsageOID.SERVER_AUTH,
        x509.ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca_cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    cert.verify_directly_issued_by(ca_cert)

    files = certs.write(pem, tmp_path / "new" / "tls", "backup01")
    assert files == config.TlsFiles(
        tmp_path / "new" / "tls" / "backup01.pem", tmp_path / "new" / "tls" / "backup01.key"
    )
    assert files.cert.read_bytes() == pem.cert and files.key.read_bytes() == pem.key
    assert mode(files.cert.parent) == 0o700
    assert mode(files.cert) == mode(files.key) == 0o600
    assert sorted(p.name for p in files.cert.parent.iterdir()) == ["backup01.key", "backup01.pem"]
