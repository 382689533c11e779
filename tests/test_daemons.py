"""End to end: the four real daemons start from one config, serve their lifeboat.v1
service, health and reflection (checked with the real grpcurl), stop on SIGTERM and
refuse an invalid config with a message naming the key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import fleet, free_port, grpcurl

pytestmark = pytest.mark.e2e

SERVICES = {
    "backupd.cli": ["lifeboat.v1.BackupService", "lifeboat.v1.OperationService"],
    "restored.cli": ["lifeboat.v1.RestoreService", "lifeboat.v1.OperationService"],
    "scheduler.cli": ["lifeboat.v1.SchedulerService"],
    "monitor.cli": ["lifeboat.v1.MonitorService"],
}


def write_config(tmp_path: Path, ports: dict[str, int]) -> Path:
    path = tmp_path / "lifeboat.yaml"
    path.write_text(
        f"""
global: {{base-dir: {tmp_path}/backups, worker-limit: 2}}
scheduler: {{listen: 127.0.0.1:{ports["scheduler.cli"]}}}
monitor: {{listen: 127.0.0.1:{ports["monitor.cli"]}, http: 127.0.0.1:{free_port()}}}
hosts:
  backup01: {{backupd: 127.0.0.1:{ports["backupd.cli"]}, restored: 127.0.0.1:{ports["restored.cli"]}}}
schedules:
  default:
    hourly: {{interval: 1h, keep: 24}}
jobs:
  vm-web01:
    schedule: default
    source: {{type: file, path: {tmp_path}/vm-web01.raw}}
"""
    )
    return path


def test_four_daemons_serve_health_and_reflection(tmp_path: Path) -> None:
    ports = {module: free_port() for module in SERVICES}
    config = write_config(tmp_path, ports)
    with fleet(tmp_path) as running:
        daemons = {
            module: running.start(
                module,
                f"127.0.0.1:{ports[module]}",
                "--config",
                str(config),
                *(["--host", "backup01"] if module in ("backupd.cli", "restored.cli") else []),
            )
            for module in SERVICES
        }
        for module, expected in SERVICES.items():
            address = daemons[module].address
            listed = grpcurl("-plaintext", address, "list")
            assert listed.returncode == 0, listed.stderr
            names = set(listed.stdout.split())
            assert {
                *expected,
                "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection",
            } <= names
            described = grpcurl("-plaintext", address, "describe", expected[0])
            assert described.returncode == 0 and "rpc " in described.stdout, described.stderr
            for service in ["", *expected]:
                check = grpcurl(
                    "-plaintext",
                    "-d",
                    json.dumps({"service": service}),
                    address,
                    "grpc.health.v1.Health/Check",
                )
                assert check.returncode == 0, check.stderr
                assert json.loads(check.stdout)["status"] == "SERVING"
        for module, daemon in daemons.items():
            assert daemon.terminate() == 0, f"{module} did not stop cleanly:\n{daemon.log()}"
            assert "stopped" in daemon.log()


def test_bad_request_gets_invalid_argument_naming_the_field(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, {m: free_port() for m in SERVICES})
    with fleet(tmp_path) as running:
        daemon = running.start("backupd.cli", f"127.0.0.1:{port}", "--config", str(config))
        reply = grpcurl(
            "-plaintext",
            "-d",
            json.dumps({"job": "vm-web01", "tags": ["daily"]}),  # not a tag of its schedule
            daemon.address,
            "lifeboat.v1.BackupService/StartBackup",
        )
        assert reply.returncode != 0
        assert "InvalidArgument" in reply.stderr and "tags:" in reply.stderr, reply.stderr


@pytest.mark.parametrize("module", list(SERVICES))
def test_invalid_config_exits_non_zero_naming_the_key(tmp_path: Path, module: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("global: {worker-limit: many}\n")
    result = subprocess.run(
        [sys.executable, "-m", module, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert f"{config}: global.worker-limit: expected an integer" in result.stderr
