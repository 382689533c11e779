"""Certificates of `lifeboat.certs` pass a real grpc mTLS handshake (and foreign ones do
not); `lifeboat tls init` writes private files and prints config lines the config accepts."""

from __future__ import annotations

import ipaddress
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from lifeboat import certs, config
from lifeboat.admin import main
from lifeboat.security import command_line_identity
from tests.support.processes import BIN, fleet, free_port


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


SAMPLE = """\
global: {{base-dir: {tmp}/backups}}
scheduler: {{listen: 10.0.0.5:9410}}
monitor: {{listen: "monitor.example.net:9413", http: 127.0.0.1:9414}}
hosts:
  backup01: {{backupd: "10.0.0.11:9411", restored: "0.0.0.0:9412"}}
  backup02: {{backupd: "backup02.example.net:9411", restored: "[2001:db8::12]:9412"}}
schedules:
  default:
    daily: {{interval: 1d, keep: 7}}
"""


def run_lifeboat(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    captured = capsys.readouterr()
    return int(exited.value.code or 0), captured.out, captured.err


def merge(base: dict[str, Any], lines: dict[str, Any]) -> dict[str, Any]:
    for key, value in lines.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


@pytest.fixture(params=["without tls", "with tls whose files do not exist yet"])
def sample(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / "lifeboat.yaml"
    document = yaml.safe_load(SAMPLE.format(tmp=tmp_path))
    if request.param != "without tls":
        document["global"]["tls"] = {"ca": f"{tmp_path}/tls/ca.pem"}
        document["client"] = {
            "tls": {"cert": f"{tmp_path}/tls/ops-admin.pem", "key": f"{tmp_path}/tls/ops-admin.key"}
        }
    path.write_text(yaml.safe_dump(document))
    return path


def alternative_names(path: Path) -> tuple[list[str], list[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    return names.get_values_for_type(x509.DNSName), ips


def test_tls_init_writes_private_files_and_lines_the_config_accepts(
    sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tls"
    code, printed, _ = run_lifeboat(
        capsys, "tls", "init", "--config", str(sample), "--out", str(out)
    )
    assert code == 0
    assert mode(out) == 0o700
    stems = ["backup01", "backup02", "ca", "control-plane"]
    stems += ["lifeboat-monitor", "lifeboat-scheduler", "ops-admin"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}.{suffix}" for stem in stems for suffix in ("pem", "key")
    )
    assert all(mode(p) == 0o600 for p in out.iterdir())

    sample.write_text(
        yaml.safe_dump(merge(yaml.safe_load(sample.read_text()), yaml.safe_load(printed)))
    )
    loaded = config.load(str(sample))
    assert loaded.security.enabled and loaded.security.ca == out / "ca.pem"
    assert loaded.security.client_tls == config.TlsFiles(
        out / "ops-admin.pem", out / "ops-admin.key"
    )
    assert loaded.host("backup01").security.tls == config.TlsFiles(
        out / "backup01.pem", out / "backup01.key"
    )
    assert loaded.scheduler_security.tls is not None and loaded.monitor_security.tls is not None
    assert command_line_identity(loaded, None, None, None) is not None  # every file readable

    assert alternative_names(out / "backup01.pem") == (["backup01"], ["10.0.0.11", "127.0.0.1"])
    assert alternative_names(out / "backup02.pem") == (
        ["backup02", "backup02.example.net"],
        ["2001:db8::12"],
    )
    assert alternative_names(out / "lifeboat-scheduler.pem") == (
        ["lifeboat-scheduler"],
        ["10.0.0.5"],
    )
    assert alternative_names(out / "lifeboat-monitor.pem") == (
        ["lifeboat-monitor", "monitor.example.net"],
        [],
    )


def test_tls_init_uses_the_first_configured_name_of_each_role(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "lifeboat.yaml"
    document = yaml.safe_load(SAMPLE.format(tmp=tmp_path))
    document["global"]["access"] = {"operator": ["rundeck", "alice"], "monitor": ["nagios"]}
    path.write_text(yaml.safe_dump(document))
    code, printed, _ = run_lifeboat(
        capsys, "--config", str(path), "tls", "init", "--out", str(tmp_path / "tls")
    )
    assert code == 0
    access = yaml.safe_load(printed)["global"]["access"]
    assert access == {
        "monitor": ["nagios"],
        "scheduler": ["lifeboat-scheduler"],
        "operator": ["rundeck", "alice"],
        "admin": ["ops-admin"],
    }
    assert (tmp_path / "tls" / "rundeck.pem").exists()
    assert (tmp_path / "tls" / "nagios.pem").exists()


def test_tls_init_refuses_to_replace_a_ca_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "lifeboat.yaml"
    path.write_text(SAMPLE.format(tmp=tmp_path))
    out = tmp_path / "tls"
    argv = ("tls", "init", "--config", str(path), "--out", str(out))
    assert run_lifeboat(capsys, *argv)[0] == 0
    ca_key = (out / "ca.key").read_bytes()

    code, printed, error = run_lifeboat(capsys, *argv)
    assert code == 1 and printed == ""
    assert "ca.key exists" in error and "--force" in error
    assert (out / "ca.key").read_bytes() == ca_key

    assert run_lifeboat(capsys, *argv, "--force")[0] == 0
    assert (out / "ca.key").read_bytes() != ca_key


def test_tls_init_refuses_names_that_would_share_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "lifeboat.yaml"
    document = yaml.safe_load(SAMPLE.format(tmp=tmp_path))
    document["global"]["access"] = {"admin": ["backup01"]}
    path.write_text(yaml.safe_dump(document))
    argv = ("tls", "init", "--config", str(path), "--out", str(tmp_path / "tls"))
    code, _, error = run_lifeboat(capsys, *argv)
    assert code == 2 and "backup01" in error
    assert not (tmp_path / "tls").exists()


@pytest.fixture
def tls_backupd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[tuple[str, Path]]:
    """backupd with a config made TLS by `lifeboat tls init`: its address and the TLS dir."""
    address = f"127.0.0.1:{free_port()}"
    path = tmp_path / "lifeboat.yaml"
    path.write_text(
        f"global: {{base-dir: {tmp_path}/backups}}\n"
        f"hosts: {{backup01: {{backupd: '{address}', restored: '127.0.0.1:{free_port()}'}}}}\n"
    )
    out = tmp_path / "tls"
    code, printed, _ = run_lifeboat(capsys, "tls", "init", "--config", str(path), "--out", str(out))
    assert code == 0
    path.write_text(
        yaml.safe_dump(merge(yaml.safe_load(path.read_text()), yaml.safe_load(printed)))
    )
    with fleet(tmp_path) as running:
        # Not waiting for health: the fleet's check dials in plaintext.
        running.start(
            "backupd.cli", address, "--config", str(path), "--host", "backup01", wait=False
        )
        yield address, out


def wait_listening(address: str, timeout: float = 20.0) -> None:
    """Until a TCP connection succeeds: grpcurl itself spends 10 s on a refused one."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.e2e
def test_grpcurl_with_the_admin_certificate_reaches_a_tls_daemon(
    tls_backupd: tuple[str, Path],
) -> None:
    address, out = tls_backupd

    def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
        # Run in the TLS directory: the README's command, with its relative file names.
        command = [str(BIN / "grpcurl"), *args, address, "list"]
        return subprocess.run(command, cwd=out, capture_output=True, text=True, timeout=20)

    wait_listening(address)
    listed = grpcurl("-cacert", "ca.pem", "-cert", "ops-admin.pem", "-key", "ops-admin.key")
    assert listed.returncode == 0, listed.stderr
    assert "lifeboat.v1.BackupService" in listed.stdout.split()
    # Refused at the handshake; grpcurl would retry it for 10 s by default.
    assert grpcurl("-connect-timeout", "2", "-plaintext").returncode != 0
    assert grpcurl("-connect-timeout", "2", "-cacert", "ca.pem").returncode != 0
