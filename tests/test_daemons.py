"""End to end: the four real daemons start from one config, serve their lifeboat.v1
service, health and reflection (checked with the real grpcurl), stop on SIGTERM and
refuse an invalid config with a message naming the key."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lifeboat import client
from lifeboat.v1 import scheduler_pb2, scheduler_pb2_grpc
from tests.support.bad_configs import SPOILERS, mend
from tests.support.processes import (
    Daemon,
    Fleet,
    fleet,
    free_port,
    grpcurl,
    lifeboat,
    wait_serving,
)

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


JOB_DB01 = "schedule: default, source: {type: file, path: /srv/images/vm-db01.raw}"


def start_all(running: Fleet, config: Path, ports: dict[str, int]) -> dict[str, Daemon]:
    return {
        module: running.start(
            module,
            f"127.0.0.1:{ports[module]}",
            "--config",
            str(config),
            *(["--host", "backup01"] if module in ("backupd.cli", "restored.cli") else []),
        )
        for module in SERVICES
    }


def test_four_daemons_serve_health_and_reflection(tmp_path: Path) -> None:
    ports = {module: free_port() for module in SERVICES}
    config = write_config(tmp_path, ports)
    with fleet(tmp_path) as running:
        daemons = start_all(running, config, ports)
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


RELOAD_FAILED = "reload failed, keeping the old config: "


def reload_failures(daemon: Daemon, count: int) -> list[str]:
    """The daemon's "reload failed" lines, once there are `count` of them."""
    deadline = time.monotonic() + 20
    while True:
        lines = [line for line in daemon.log().splitlines() if RELOAD_FAILED in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return [line[line.index(f"{daemon.name} {RELOAD_FAILED}") :] for line in lines]
        time.sleep(0.05)


def scheduled_jobs(address: str) -> list[str]:
    with client.channel(address, None) as channel:
        reply = scheduler_pb2_grpc.SchedulerServiceStub(channel).ListJobs(
            scheduler_pb2.ListJobsRequest(), timeout=10
        )
    return [view.job.name for view in reply.jobs]


def test_a_bad_config_on_reload_keeps_every_daemon_serving_the_old_one(tmp_path: Path) -> None:
    ports = {module: free_port() for module in SERVICES}
    config = write_config(tmp_path, ports)
    good = config.read_text()
    own = tmp_path / "client.yaml"  # what `lifeboat` reads: a good copy
    own.write_text(good)
    with fleet(tmp_path) as running:
        daemons = start_all(running, config, ports)
        scheduler = daemons["scheduler.cli"]
        for count, spoil in enumerate(SPOILERS, start=1):
            problem = spoil(config)
            for daemon in daemons.values():
                daemon.process.send_signal(signal.SIGHUP)
            for daemon in daemons.values():
                failures = reload_failures(daemon, count)
                assert len(failures) == count, daemon.log()
                assert failures[-1].startswith(f"{daemon.name} {RELOAD_FAILED}{config}: ")
                assert problem in failures[-1], failures[-1]
                wait_serving(daemon.address, timeout=5)
            assert scheduled_jobs(scheduler.address) == ["vm-web01"]
            refused = lifeboat(own, "reload")
            assert refused.returncode == 1, refused.stderr
            assert f"{config}: " in refused.stderr and problem in refused.stderr, refused.stderr
            if count == 1:
                local = lifeboat(config, "reload")  # lifeboat reads the bad file itself first
                assert local.returncode == 2 and problem in local.stderr, local.stderr
            mend(config)
            config.write_text(good)

        config.write_text(good.replace("jobs:\n", f"jobs:\n  vm-db01: {{{JOB_DB01}}}\n"))
        reloaded = lifeboat(own, "reload")
        assert reloaded.returncode == 0, reloaded.stderr
        assert reloaded.stdout.splitlines() == ["added: vm-db01", "removed: -", "changed: -"]
        assert scheduled_jobs(scheduler.address) == ["vm-db01", "vm-web01"]
        backupd = daemons["backupd.cli"]
        backupd.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "2 jobs configured for host backup01" not in backupd.log():
            assert time.monotonic() < deadline, backupd.log()
            time.sleep(0.05)
        for daemon in daemons.values():
            log = daemon.log()
            assert "Traceback" not in log and "never retrieved" not in log, log
