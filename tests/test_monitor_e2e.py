"""End to end: real lifeboat-backupd and lifeboat-restored on two hosts, the real
lifeboat-monitor, file sources, asked by the real check_lifeboat console script and by
Debian's check_http. Backups are started with BackupService.StartBackup directly (no
scheduler runs: the check says so, and still judges every job from its host).

The story: before the first backup the grace period is over and the check is
CRITICAL naming the jobs; a reload gives them a longer window; after backups it is
OK; a stopped backupd makes its host's jobs UNKNOWN within two poll intervals; a
corrupted revision found by VerifyRevision makes its job WARNING. In plaintext and over
mTLS (check_lifeboat and lifeboat present the config's client.tls; check_http asks the
plaintext HTTP /check either way).
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifeboat import client
from lifeboat import config as config_module
from lifeboat.v1 import backup_pb2, backup_pb2_grpc, resources_pb2
from tests.support.images import flip_byte
from tests.support.needs import need
from tests.support.processes import BIN, Daemon, Fleet, fleet, free_port
from tests.support.transport import Transport

pytestmark = pytest.mark.e2e

CHECK_HTTP = Path("/usr/lib/nagios/plugins/check_http")
POLL_INTERVAL = 1  # the shortest a config may say
JOBS = {"vm-db01": "backup01", "vm-mail": "backup02", "vm-web01": "backup01"}
HOSTS = ("backup01", "backup02")


def config_text(tmp_path: Path, ports: dict[str, int], sla_factor: int) -> str:
    hosts = "".join(
        f"  {h}: {{backupd: 127.0.0.1:{ports[h + '.backupd']}, "
        f"restored: 127.0.0.1:{ports[h + '.restored']}, base-dir: {tmp_path}/{h}}}\n"
        for h in HOSTS
    )
    jobs = "".join(
        f"  {job}: {{host: {host}, schedule: fast, sla-factor: {sla_factor}, "
        f"source: {{type: file, path: {tmp_path}/{job}.raw}}}}\n"
        for job, host in JOBS.items()
    )
    return (
        f"global: {{base-dir: {tmp_path}/repo}}\n"
        f"scheduler: {{listen: 127.0.0.1:{ports['scheduler']}}}\n"
        f"monitor: {{listen: 127.0.0.1:{ports['monitor']}, http: 127.0.0.1:{ports['http']}, "
        f"poll-interval: {POLL_INTERVAL}}}\n"
        f"hosts:\n{hosts}"
        "schedules: {fast: {often: {interval: 1s, keep: 5}}}\n"
        f"jobs:\n{jobs}"
    )


class Story:
    def __init__(self, tmp_path: Path, running: Fleet, transport: Transport) -> None:
        self.tmp_path = tmp_path
        self.running = running
        self.transport = transport
        names = [f"{h}.{d}" for h in HOSTS for d in ("backupd", "restored")]
        self.ports = {n: free_port() for n in [*names, "scheduler", "monitor", "http"]}
        self.config_path = tmp_path / "lifeboat.yaml"
        self.write_config(sla_factor=2)
        self.daemons: dict[str, Daemon] = {}
        for job in JOBS:
            (tmp_path / f"{job}.raw").write_bytes(random.randbytes(1 << 20))

    def write_config(self, sla_factor: int) -> None:
        self.transport.write(self.config_path, config_text(self.tmp_path, self.ports, sla_factor))
        self.config = config_module.load(str(self.config_path))

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def start(self, name: str) -> None:
        host, _, daemon = name.partition(".")
        module = f"{daemon or host}.cli"
        args = ["--host", host] if daemon else []
        self.daemons[name] = self.running.start(
            module,
            self.address(name),
            *("--config", str(self.config_path), *args),
            identity=self.transport.identity(),
        )
        self.transport.assert_served(self.address(name))

    def check(self, *args: str) -> tuple[int, str]:
        result = subprocess.run(
            [str(BIN / "check_lifeboat"), "--config", str(self.config_path), "-t", "5", *args],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert result.stdout.count("\n") == 1, result.stdout + result.stderr
        return result.returncode, result.stdout.strip()

    def wait_for(
        self, code: int, *args: str, within: float, seeing: str = ""
    ) -> tuple[int, str, float]:
        """Run the check until it exits with `code` (and prints `seeing`), or time is up."""
        started = time.monotonic()
        while True:
            got, line = self.check(*args)
            elapsed = time.monotonic() - started
            if (got == code and seeing in line) or elapsed > within:
                return got, line, elapsed
            time.sleep(0.1)

    def status(self) -> str:
        result = subprocess.run(
            [str(BIN / "lifeboat"), "--config", str(self.config_path), "status"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def check_http(self, *args: str) -> tuple[int, str]:
        result = subprocess.run(
            [str(CHECK_HTTP), "-H", "127.0.0.1", "-p", str(self.ports["http"]), "-B", *args],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return result.returncode, result.stdout

    def backup(self, job: str) -> resources_pb2.Operation:
        address = self.config.hosts[JOBS[job]].backupd
        identity = self.transport.identity()
        with client.channel(address, identity) as channel:
            stub = backup_pb2_grpc.BackupServiceStub(channel)
            request = backup_pb2.StartBackupRequest(job=job, tags=["often"])
            reply = client.call(address, stub.StartBackup, request, 10)
        done = client.watch(address, identity, reply.operation.name, show=False)
        assert done.state == resources_pb2.OPERATION_STATE_SUCCEEDED, done.error
        return done

    def verify(self, job: str) -> resources_pb2.Operation:
        address = self.config.hosts[JOBS[job]].backupd
        identity = self.transport.identity()
        with client.channel(address, identity) as channel:
            stub = backup_pb2_grpc.BackupServiceStub(channel)
            request = backup_pb2.VerifyRevisionRequest(job=job)
            reply = client.call(address, stub.VerifyRevision, request, 10)
        return client.watch(address, identity, reply.operation.name, show=False)

    def reload_monitor(self) -> None:
        monitor = self.daemons["monitor"]
        loaded = monitor.log().count("monitor config: ")
        monitor.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while monitor.log().count("monitor config: ") == loaded:
            assert time.monotonic() < deadline, monitor.log()
            time.sleep(0.05)


@pytest.fixture
def story(tmp_path: Path, transport: Transport) -> Iterator[Story]:
    need(CHECK_HTTP.exists(), "needs check_http (apt-get install monitoring-plugins-basic)")
    with fleet(tmp_path) as running:
        yield Story(tmp_path, running, transport)


def perfdata(line: str) -> dict[str, str]:
    return dict(field.split("=", 1) for field in line.split(" | ", 1)[1].split())


def test_nagios_story(story: Story) -> None:
    for host in HOSTS:
        story.start(f"{host}.backupd")
        story.start(f"{host}.restored")
    story.start("monitor")

    # 1. Never backed up, grace (first 1s slot + 2s window) over: CRITICAL naming the jobs.
    code, line, _ = story.wait_for(2, within=10)
    assert code == 2, line
    assert line.split(" | ")[0] == (
        "LIFEBOAT CRITICAL - 3 of 3 jobs outside SLA: vm-db01, vm-mail, vm-web01 (never); "
        "scheduler unavailable"
    )
    assert perfdata(line) == {
        "jobs": "3",
        "outside_sla": "3",
        "warning": "0",
        "unknown": "0",
        "hosts": "2",
        "hosts_unreachable": "0",
    }
    http_code, http_out = story.check_http("-u", "/check")
    assert http_code == 2 and "503" in http_out, http_out
    assert "LIFEBOAT CRITICAL - 3 of 3 jobs outside SLA" in http_out

    # 2. A reload widens the window to 2 minutes (keeping when the jobs were first seen),
    # then every job is backed up: OK.
    story.write_config(sla_factor=120)
    story.reload_monitor()
    for job in JOBS:
        story.backup(job)
    # Until the monitor has seen the backups: then every job has an age of its last good.
    code, line, _ = story.wait_for(0, within=3 * POLL_INTERVAL + 2, seeing="oldest_good_age=")
    assert code == 0, line
    assert line.startswith(
        "LIFEBOAT OK - 3 of 3 jobs within SLA; scheduler unavailable | jobs=3 outside_sla=0 "
        "warning=0 unknown=0 hosts=2 hosts_unreachable=0 oldest_good_age="
    )
    http_code, http_out = story.check_http("-u", "/check", "-s", "LIFEBOAT OK")
    assert http_code == 0 and "200 OK" in http_out, http_out
    assert story.check("--job", "vm-mail")[0] == 0
    # OK already holds while a job still waits for its first backup within its grace, so
    # wait until the monitor has seen every job's backup before reading the table.
    deadline = time.monotonic() + 3 * POLL_INTERVAL + 2
    while "never" in story.status() and time.monotonic() < deadline:
        time.sleep(0.1)
    table = story.status().splitlines()
    assert table[0].split()[:3] == ["JOB", "HOST", "STATE"]
    for row, job in zip(table[1:4], sorted(JOBS), strict=True):
        assert row.split()[:5] == [job, JOBS[job], "OK", row.split()[3], "ago"], row
        assert row.split()[5] == "2m", "the SLA window: 120 x 1s"

    # 3. backup02's backupd stops: its job is UNKNOWN within two poll intervals.
    story.daemons["backup02.backupd"].terminate()
    code, line, elapsed = story.wait_for(3, "--host", "backup02", within=5)
    assert code == 3, line
    assert (
        line.split(" | ")[0]
        == "LIFEBOAT UNKNOWN - 1 unknown: vm-mail (host backup02 unreachable); scheduler unavailable"
    )
    # Measured from the stop to the answer of a check_lifeboat run (~0.1s of its own).
    assert elapsed < 2 * POLL_INTERVAL + 0.5, elapsed
    assert story.check("--host", "backup01")[0] == 0
    assert story.check()[0] == 3
    http_code, http_out = story.check_http("-u", "/check?host=backup02")
    assert http_code == 2 and "LIFEBOAT UNKNOWN" in http_out, http_out

    # 4. A flipped byte in vm-web01's newest revision, found by VerifyRevision: WARNING.
    newest = story.backup("vm-web01")
    image = story.config.hosts["backup01"].base_dir / "vm-web01" / newest.revision_id
    flip_byte(image, 12345)
    verified = story.verify("vm-web01")
    assert verified.state == resources_pb2.OPERATION_STATE_FAILED
    code, line, _ = story.wait_for(1, "--job", "vm-web01", within=3 * POLL_INTERVAL + 2)
    assert code == 1, line
    assert line.split(" | ")[0] == (
        "LIFEBOAT WARNING - 1 warning: vm-web01 (newest revision distrusted; verification "
        "failed); scheduler unavailable"
    )
    assert story.check("--host", "backup01")[0] == 1
    # WARNING still answers 200 (so check_http says OK), with the WARNING line in the body.
    http_code, http_out = story.check_http("-u", "/check?job=vm-web01", "-s", "LIFEBOAT WARNING")
    assert http_code == 0 and "200 OK" in http_out, http_out

    with urllib.request.urlopen(f"http://{story.address('http')}/metrics", timeout=10) as reply:
        metrics = reply.read().decode()
    assert re.search(r'^lifeboat_job_sla_state\{job="vm-web01",host="backup01"\} 1$', metrics, re.M)
    assert re.search(r'^lifeboat_host_up\{host="backup02"\} 0$', metrics, re.M)
    assert re.search(r'^lifeboat_job_revisions\{job="vm-web01",host="backup01"\} 2$', metrics, re.M)

    assert story.daemons["monitor"].terminate() == 0, story.daemons["monitor"].log()
