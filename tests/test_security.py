"""The trust boundary with real daemons, real certificates and real handshakes: every RPC of
every service against every role, callers without a valid certificate, plaintext rules,
audit lines."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lifeboat import access, client
from lifeboat import config as config_module
from lifeboat.access import Access, Caller, Role
from lifeboat.security import ClientIdentity, Guard, ServerTls, is_loopback
from lifeboat.v1 import (
    backup_pb2,
    backup_pb2_grpc,
    monitor_pb2,
    operations_pb2,
    restore_pb2,
    scheduler_pb2,
)
from tests.support import pki as pki_module
from tests.support.pki import ADMIN, HOST, MONITOR, NOBODY, OPERATOR, SCHEDULER, Pki
from tests.support.processes import REPO, Fleet, free_port, grpcurl

pytestmark = pytest.mark.e2e

SERVICES = {
    "BackupService": backup_pb2,
    "RestoreService": restore_pb2,
    "OperationService": operations_pb2,
    "SchedulerService": scheduler_pb2,
    "MonitorService": monitor_pb2,
}
# Which daemon serves which service (OperationService on both workers).
SERVED_BY = {
    "backupd": ("BackupService", "OperationService"),
    "restored": ("RestoreService", "OperationService"),
    "scheduler": ("SchedulerService",),
    "monitor": ("MonitorService",),
}
ROLE_OF_NAME = {
    MONITOR: Role.MONITOR,
    SCHEDULER: Role.SCHEDULER,
    OPERATOR: Role.OPERATOR,
    ADMIN: Role.ADMIN,
    NOBODY: None,
}


def every_method() -> list[MethodDescriptor]:
    return [
        method
        for name, module in SERVICES.items()
        for method in module.DESCRIPTOR.services_by_name[name].methods
    ]


def path_of(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


# -- the rule table (pure) -------------------------------------------------------------------


def test_every_rpc_has_exactly_one_rule() -> None:
    paths = {path_of(method) for method in every_method()}
    assert paths - set(access.RULES) == set(), "an RPC without an access rule"
    assert set(access.RULES) - paths == set(), "a rule for an RPC that does not exist"
    assert set(access.RULES) >= access.AUDITED


@pytest.mark.parametrize(
    ("method", "role", "allowed"),
    [
        ("/lifeboat.v1.BackupService/ListRevisions", Role.MONITOR, True),
        ("/lifeboat.v1.BackupService/StartBackup", Role.MONITOR, False),
        ("/lifeboat.v1.BackupService/StartBackup", Role.SCHEDULER, True),
        ("/lifeboat.v1.RestoreService/StartRestore", Role.SCHEDULER, False),
        ("/lifeboat.v1.RestoreService/ReadRevision", Role.OPERATOR, True),
        ("/lifeboat.v1.OperationService/CancelOperation", Role.SCHEDULER, False),
        ("/lifeboat.v1.BackupService/DeleteRevision", Role.OPERATOR, False),
        ("/lifeboat.v1.BackupService/DeleteJobData", Role.ADMIN, True),
        ("/lifeboat.v1.SchedulerService/ReloadConfig", Role.OPERATOR, False),
        ("/lifeboat.v1.BackupService/NewRpcWithoutRule", Role.ADMIN, False),
        ("/grpc.health.v1.Health/Check", None, True),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", None, True),
    ],
)
def test_refusal_table(method: str, role: Role | None, allowed: bool) -> None:
    reason = access.refusal(method, Caller("someone", role))
    assert (reason is None) == allowed, reason


def test_refusal_names_the_rpc_and_the_role_it_needs() -> None:
    reason = access.refusal(
        "/lifeboat.v1.BackupService/DeleteRevision", Caller("cp", Role.OPERATOR)
    )
    assert reason == (
        "BackupService/DeleteRevision needs role admin; certificate 'cp' has role operator"
    )


@pytest.mark.parametrize(
    ("names", "role"),
    [
        (["ops-admin"], Role.ADMIN),
        (["unknown", "lifeboat-monitor"], Role.MONITOR),  # a DNS SAN counts like the CN
        (["control-plane", "ops-admin"], Role.ADMIN),  # the highest role wins
        (["unknown"], None),
        ([], None),
    ],
)
def test_role_of_a_certificate(names: list[str], role: Role | None) -> None:
    roles = {Role[k.upper()]: frozenset(v) for k, v in pki_module.ACCESS.items()}
    assert Access(roles).role_of(names) == role


def test_a_long_certificate_name_is_clipped_where_it_is_shown(tmp_path: Path) -> None:
    pki = pki_module.make_pki(tmp_path)
    config = config_module.parse(pki_module.merge({"hosts": {HOST: PLAIN_HOST}}, pki.config()), "t")
    section = config.host(HOST).security
    guard = Guard(ServerTls(config, section), Access({Role.ADMIN: frozenset({"x" * 300})}))
    caller = guard.caller({"x509_subject_alternative_name": [b"x" * 300]})
    assert caller.role == Role.ADMIN
    assert len(caller.name) < 150


PLAIN_HOST = {"backupd": "127.0.0.1:9411", "restored": "127.0.0.1:9412"}


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:9411", True),
        ("127.8.9.1:9411", True),
        ("[::1]:9411", True),
        ("localhost:9411", True),
        ("0.0.0.0:9411", False),
        ("[::]:9411", False),
        ("10.0.0.5:9411", False),
        ("backup01.example:9411", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert is_loopback(address) == loopback


# -- real daemons with TLS -------------------------------------------------------------------


@dataclass
class TlsFleet:
    pki: Pki
    workdir: Path
    config_path: Path
    addresses: dict[str, str]
    fleet: Fleet

    def channel(self, daemon: str, identity: ClientIdentity | None) -> Any:
        return client.channel(self.addresses[daemon], identity)

    def log(self, daemon: str) -> str:
        return next(d for d in self.fleet.daemons if d.name == daemon).log()

    def grpcurl_as(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        files = self.pki.files[name]
        tls = ("-cacert", str(self.pki.ca), "-cert", str(files.cert), "-key", str(files.key))
        return grpcurl(*tls, *args)


def fleet_config(workdir: Path, pki: Pki, addresses: dict[str, str]) -> dict[str, Any]:
    source = workdir / "vm-a.raw"
    source.write_bytes(os.urandom(1 << 20))
    (workdir / "restore").mkdir()
    plain = {
        "global": {
            "base-dir": str(workdir / "repo"),
            "restore-targets": [str(workdir / "restore")],
            "verify-fraction": 1.0,
        },
        "scheduler": {"listen": addresses["scheduler"]},
        "monitor": {
            "listen": addresses["monitor"],
            "http": f"127.0.0.1:{free_port()}",
            "poll-interval": "1s",
        },
        "hosts": {HOST: {"backupd": addresses["backupd"], "restored": addresses["restored"]}},
        "schedules": {"default": {"daily": {"interval": "1d", "keep": 7}}},
        "jobs": {
            "vm-a": {
                "host": HOST,
                "schedule": "default",
                "source": {"type": "file", "path": str(source)},
            }
        },
    }
    return pki_module.merge(plain, pki.config())


@pytest.fixture(scope="module")
def tls_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsFleet]:
    workdir = tmp_path_factory.mktemp("tls-fleet")
    pki = pki_module.make_pki(workdir / "tls")
    addresses = {name: f"127.0.0.1:{free_port()}" for name in SERVED_BY}
    config_path = workdir / "lifeboat.yaml"
    config_path.write_text(yaml.safe_dump(fleet_config(workdir, pki, addresses)))
    admin = pki.identity(ADMIN)
    fleet = Fleet(workdir)
    try:
        for name, module in (
            ("backupd", "backupd.cli"),
            ("restored", "restored.cli"),
            ("scheduler", "scheduler.cli"),
            ("monitor", "monitor.cli"),
        ):
            fleet.start(module, addresses[name], "--config", str(config_path), identity=admin)
        yield TlsFleet(pki, workdir, config_path, addresses, fleet)
    finally:
        fleet.stop_all()


def call(channel: grpc.Channel, method: MethodDescriptor) -> grpc.StatusCode:
    """Call `method` with an empty request; the status code it ends with."""
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    kind = channel.unary_stream if method.server_streaming else channel.unary_unary
    invoke = kind(
        path_of(method),
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    try:
        reply = invoke(request_class(), timeout=10)
        if method.server_streaming:
            list(reply)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_every_rpc_against_every_role(tls_fleet: TlsFleet) -> None:
    """Empty requests: refused calls are PERMISSION_DENIED before any validation; allowed
    ones reach the service (which may answer INVALID_ARGUMENT, NOT_FOUND, ...)."""
    checked = 0
    for daemon, services in SERVED_BY.items():
        for name, role in ROLE_OF_NAME.items():
            with tls_fleet.channel(daemon, tls_fleet.pki.identity(name)) as channel:
                for method in every_method():
                    if method.containing_service.name not in services:
                        continue
                    code = call(channel, method)
                    needed = access.RULES[path_of(method)]
                    allowed = role is not None and role >= needed
                    where = f"{name} -> {daemon} {method.name}"
                    if allowed:
                        assert code not in (
                            grpc.StatusCode.PERMISSION_DENIED,
                            grpc.StatusCode.UNAVAILABLE,
                            grpc.StatusCode.UNAUTHENTICATED,
                        ), where
                    else:
                        assert code == grpc.StatusCode.PERMISSION_DENIED, where
                    checked += 1
    assert checked == 5 * (len(every_method()) + 4)  # OperationService is served twice


def test_permission_denied_names_rpc_and_role(tls_fleet: TlsFleet) -> None:
    with tls_fleet.channel("backupd", tls_fleet.pki.identity(OPERATOR)) as channel:
        stub = backup_pb2_grpc.BackupServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.DeleteJobData(backup_pb2.DeleteJobDataRequest(job="vm-a", confirm_job="vm-a"))
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert raised.value.details() == (
        "BackupService/DeleteJobData needs role admin; certificate 'control-plane' has role operator"
    )


@pytest.mark.parametrize("daemon", list(SERVED_BY))
def test_health_and_reflection_need_only_a_valid_certificate(
    tls_fleet: TlsFleet, daemon: str
) -> None:
    with tls_fleet.channel(daemon, tls_fleet.pki.identity(NOBODY)) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    listed = tls_fleet.grpcurl_as(NOBODY, tls_fleet.addresses[daemon], "list")
    assert listed.returncode == 0, listed.stderr
    assert "grpc.health.v1.Health" in listed.stdout.split()


@pytest.mark.parametrize("daemon", list(SERVED_BY))
def test_the_handshake_refuses_callers_without_a_valid_certificate(
    tls_fleet: TlsFleet, daemon: str
) -> None:
    ca = tls_fleet.pki.ca.read_bytes()
    without_certificate = grpc.ssl_channel_credentials(root_certificates=ca)
    address = tls_fleet.addresses[daemon]
    attempts = {
        "no certificate": grpc.secure_channel(address, without_certificate),
        "foreign CA": grpc.secure_channel(address, tls_fleet.pki.foreign_identity().credentials()),
        "plaintext": grpc.insecure_channel(address),
    }
    for what, channel in attempts.items():
        with channel, pytest.raises(grpc.RpcError) as raised:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, what


def test_grpcurl_as_admin_as_the_readme_says(tls_fleet: TlsFleet) -> None:
    described = tls_fleet.grpcurl_as(
        ADMIN,
        "-d",
        '{"job": "vm-a"}',
        tls_fleet.addresses["backupd"],
        "lifeboat.v1.BackupService/GetJobStatus",
    )
    assert described.returncode == 0, described.stderr
    assert '"job": "vm-a"' in described.stdout


def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.2)


def test_the_scheduler_backs_up_over_mtls_and_both_sides_audit_it(tls_fleet: TlsFleet) -> None:
    def backed_up() -> bool:
        with tls_fleet.channel("backupd", tls_fleet.pki.identity(MONITOR)) as channel:
            reply = backup_pb2_grpc.BackupServiceStub(channel).GetJobStatus(
                backup_pb2.GetJobStatusRequest(job="vm-a"), timeout=5
            )
        return reply.status.HasField("last_good_revision")

    wait_for(backed_up)
    expected = (
        f"audit caller={SCHEDULER} role=scheduler rpc=BackupService/StartBackup job=vm-a result=OK"
    )
    assert expected in tls_fleet.log("backupd")
    job_log = (tls_fleet.workdir / "repo" / "vm-a" / "log").read_text()
    assert expected in job_log


def test_a_refused_mutation_is_audited(tls_fleet: TlsFleet) -> None:
    with tls_fleet.channel("backupd", tls_fleet.pki.identity(NOBODY)) as channel:
        stub = backup_pb2_grpc.BackupServiceStub(channel)
        with pytest.raises(grpc.RpcError):
            stub.VerifyRevision(backup_pb2.VerifyRevisionRequest(job="vm-a"), timeout=5)
    expected = (
        f"audit caller={NOBODY} role=none rpc=BackupService/VerifyRevision job=vm-a "
        "result=PERMISSION_DENIED"
    )
    wait_for(lambda: expected in tls_fleet.log("backupd"), timeout=10)


def run_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def test_lifeboat_and_check_lifeboat_use_the_configured_certificates(
    tls_fleet: TlsFleet,
) -> None:
    config = str(tls_fleet.config_path)
    revisions = run_command("lifeboat.admin", "--config", config, "revisions", "vm-a")
    assert revisions.returncode == 0, revisions.stderr
    nobody = tls_fleet.pki.files[NOBODY]
    refused = run_command(
        "lifeboat.admin",
        "--config",
        config,
        "--tls-cert",
        str(nobody.cert),
        "--tls-key",
        str(nobody.key),
        "jobs",
    )
    assert refused.returncode == 1
    assert "SchedulerService/ListJobs needs role monitor" in refused.stderr
    check = run_command("monitor.check", "--config", config)
    assert "LIFEBOAT UNKNOWN" not in check.stdout, check.stdout
    monitor = tls_fleet.pki.files[MONITOR]
    by_options = run_command(
        "monitor.check",
        "-H",
        tls_fleet.addresses["monitor"],
        "--tls-cert",
        str(monitor.cert),
        "--tls-key",
        str(monitor.key),
        "--tls-ca",
        str(tls_fleet.pki.ca),
    )
    assert by_options.stdout.startswith("LIFEBOAT "), by_options.stdout
    assert "LIFEBOAT UNKNOWN" not in by_options.stdout, by_options.stdout
    plaintext = run_command("monitor.check", "-H", tls_fleet.addresses["monitor"])
    assert plaintext.returncode == 3 and plaintext.stdout.startswith("LIFEBOAT UNKNOWN")


# -- plaintext -------------------------------------------------------------------------------


def plain_config(tmp_path: Path, listen: str, insecure: bool) -> Path:
    host: dict[str, Any] = {"backupd": listen, "restored": f"127.0.0.1:{free_port()}"}
    if insecure:
        host["insecure"] = True
    path = tmp_path / "plain.yaml"
    path.write_text(
        yaml.safe_dump({"global": {"base-dir": str(tmp_path / "repo")}, "hosts": {HOST: host}})
    )
    return path


def test_a_non_loopback_plaintext_listen_refuses_to_start(tmp_path: Path) -> None:
    config = plain_config(tmp_path, f"0.0.0.0:{free_port()}", insecure=False)
    started = subprocess.run(
        [sys.executable, "-m", "backupd.cli", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert started.returncode == 2, started.stderr
    assert f"{config}: hosts.{HOST}.backupd: 0.0.0.0:" in started.stderr
    assert "insecure: true" in started.stderr


def test_insecure_true_serves_plaintext_with_a_warning(tmp_path: Path) -> None:
    port = free_port()
    config = plain_config(tmp_path, f"0.0.0.0:{port}", insecure=True)
    fleet = Fleet(tmp_path)
    try:
        daemon = fleet.start("backupd.cli", f"0.0.0.0:{port}", "--config", str(config), wait=False)
        from tests.support.processes import wait_serving

        wait_serving(f"127.0.0.1:{port}")
        assert "without authentication (insecure: true in hosts.backup01)" in daemon.log()
    finally:
        fleet.stop_all()


async def test_a_reload_applies_new_roles_at_once(tmp_path: Path) -> None:
    """SIGHUP's path: the daemon re-reads the file; the next call meets the new roles."""
    from backupd.server import build

    pki = pki_module.make_pki(tmp_path / "tls")
    port = free_port()
    plain = {
        "global": {"base-dir": str(tmp_path / "repo")},
        "hosts": {HOST: {"backupd": f"127.0.0.1:{port}", "restored": f"127.0.0.1:{free_port()}"}},
    }
    config_path = tmp_path / "lifeboat.yaml"
    document = pki_module.merge(plain, pki.config())
    config_path.write_text(yaml.safe_dump(document))
    daemon, _ = build(config_module.load(str(config_path)), HOST, f"127.0.0.1:{port}")
    await daemon.start()
    request = backup_pb2.DeleteJobDataRequest(job="vm-gone", confirm_job="vm-gone")
    try:
        async with client.aio_channel(f"127.0.0.1:{port}", pki.identity(OPERATOR)) as channel:
            stub = backup_pb2_grpc.BackupServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.DeleteJobData(request, timeout=5)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

            document["global"]["access"]["admin"] = [ADMIN, OPERATOR]
            config_path.write_text(yaml.safe_dump(document))
            await daemon.reload()
            with pytest.raises(grpc.aio.AioRpcError) as answered:
                await stub.DeleteJobData(request, timeout=5)
            assert answered.value.code() == grpc.StatusCode.NOT_FOUND  # admitted, no such job
    finally:
        await daemon.stop(grace=1)
