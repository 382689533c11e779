"""`lifeboat backup`, `lifeboat revisions` and `lifeboat verify` against a real backupd,
in plaintext and over mTLS."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.processes import fleet, free_port, lifeboat
from tests.support.transport import Transport

pytestmark = pytest.mark.e2e


def test_backup_revisions_verify(tmp_path: Path, transport: Transport) -> None:
    source = tmp_path / "vm.raw"
    source.write_bytes(os.urandom(2 << 20))
    port = free_port()
    config = transport.write(
        tmp_path / "lifeboat.yaml",
        f"global: {{base-dir: {tmp_path}/repo}}\n"
        f"hosts: {{backup01: {{backupd: 127.0.0.1:{port}, restored: 127.0.0.1:{free_port()}}}}}\n"
        "schedules: {default: {daily: {interval: 1d, keep: 7}}}\n"
        f"jobs: {{vm-a: {{schedule: default, source: {{type: file, path: {source}}}}}}}\n",
    )
    with fleet(tmp_path) as running:
        backupd = running.start(
            "backupd.cli",
            f"127.0.0.1:{port}",
            "--config",
            str(config),
            identity=transport.identity(),
        )
        transport.assert_served(backupd.address)
        backup = lifeboat(config, "backup", "vm-a", "--tag", "daily", "--wait")
        assert backup.returncode == 0, backup.stderr
        assert "succeeded revision" in backup.stdout
        revision_id = backup.stdout.split("revision ")[1].split()[0]

        listed = lifeboat(config, "revisions", "vm-a")
        assert listed.returncode == 0, listed.stderr
        header, row = listed.stdout.splitlines()
        assert header.split()[:2] == ["REVISION", "CREATED"]
        assert row.split()[0] == revision_id and "daily" in row and "trusted" in row

        verified = lifeboat(config, "verify", "vm-a")
        assert verified.returncode == 0, verified.stderr
        assert f"succeeded revision {revision_id}" in verified.stdout

        again = lifeboat(config, "backup", "vm-a", "--tag", "daily", "--wait")
        assert again.returncode == 0, again.stderr
        rev = tmp_path / "repo" / "vm-a" / f"{revision_id}.rev"
        rev.write_bytes(b"")
        damaged = lifeboat(config, "revisions", "vm-a")
        assert damaged.returncode == 0, damaged.stderr
        _, first, second, reason = damaged.stdout.splitlines()
        assert first.split()[0] == revision_id and first.split()[-2:] == ["damaged", "?"]
        assert "trusted" in second
        assert reason == f"revision {revision_id} damaged: {rev}: empty"

        unknown = lifeboat(config, "revisions", "vm-nope")
        assert unknown.returncode == 1
        assert "no job named 'vm-nope'" in unknown.stderr
