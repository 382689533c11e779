"""`make run`'s launcher: four services on the default ports from the embedded config,
all stopped cleanly by one Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO, grpcurl, wait_serving

pytestmark = pytest.mark.e2e

ADDRESSES = {
    "127.0.0.1:9410": "lifeboat.v1.SchedulerService",
    "127.0.0.1:9411": "lifeboat.v1.BackupService",
    "127.0.0.1:9412": "lifeboat.v1.RestoreService",
    "127.0.0.1:9413": "lifeboat.v1.MonitorService",
}


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_run_starts_and_stops_everything(tmp_path: Path) -> None:
    if not all(port_free(port) for port in range(9410, 9415)):
        pytest.skip("the default ports 9410-9414 are in use (is `make run` running?)")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "lifeboat.devrun"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for address, service in ADDRESSES.items():
            wait_serving(address, timeout=30, service=service)
            listed = grpcurl("-plaintext", address, "list")
            assert service in listed.stdout.split(), listed.stderr
        assert (tmp_path / "var" / "lifeboat.yaml").exists()
        assert sorted(p.name for p in (tmp_path / "var" / "images").iterdir()) == [
            "vm-db01.raw",
            "vm-web01.raw",
        ]
        launcher.send_signal(signal.SIGINT)
        output, _ = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 0, output
    assert "lifeboat stopped" in output
    assert all(port_free(port) for port in range(9410, 9415)), "every service must be gone"
