"""Records of restores in flight: at start-up the recorded temporary file goes, and nothing
else, whatever the record says."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lifeboat.repository import Repository
from restored.inflight import DIRECTORY, InFlight, InFlightRestores
from restored.targets import FileTarget, TargetPolicy


@pytest.fixture
def repository(tmp_path: Path) -> Repository:
    repository = Repository(tmp_path / "repo")
    repository.create()
    repository.job("vm-a").append_log("backed up")
    (tmp_path / "restore").mkdir()
    return repository


def in_flight(tmp_path: Path, target: Path) -> InFlight:
    """A restore to `target` as restored starts it: the real target's temporary file."""
    policy = TargetPolicy("backup01", (str(tmp_path / "restore"),), tmp_path / "repo")
    opened = FileTarget(str(target), str(target), policy)
    opened.open(4096, overwrite=True)
    temporary = opened.temporary_file()
    assert temporary is not None
    os.close(opened.fd)  # as a killed restored leaves it: the file stays
    assert opened.directory is not None
    opened.directory.close()
    return InFlight.of("restore-vm-a-1", "vm-a", temporary)


def job_log(repository: Repository) -> str:
    return (repository.job("vm-a").path / "log").read_text()


def test_a_record_is_private_and_goes_when_forgotten(
    tmp_path: Path, repository: Repository
) -> None:
    records = InFlightRestores(repository)
    restore = in_flight(tmp_path, tmp_path / "restore" / "vm.raw")
    records.record(restore)
    (path,) = (repository.base_dir / DIRECTORY).iterdir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    records.forget(restore.operation)
    assert list(path.parent.iterdir()) == []


def test_recovery_removes_the_recorded_temporary_file_only(
    tmp_path: Path, repository: Repository
) -> None:
    target = tmp_path / "restore" / "vm.raw"
    target.write_bytes(b"old content")
    restore = in_flight(tmp_path, target)
    InFlightRestores(repository).record(restore)

    InFlightRestores(repository).recover()

    assert not Path(restore.temporary).exists()
    assert target.read_bytes() == b"old content"
    assert list((repository.base_dir / DIRECTORY).iterdir()) == []
    assert (
        f"restore restore-vm-a-1 to {target} interrupted by a restart: "
        f"removed temporary file {restore.temporary}"
    ) in job_log(repository)


def test_a_file_that_took_the_temporary_name_is_left_alone(
    tmp_path: Path, repository: Repository
) -> None:
    restore = in_flight(tmp_path, tmp_path / "restore" / "vm.raw")
    InFlightRestores(repository).record(restore)
    moved = tmp_path / "restore" / "moved-away"
    os.rename(restore.temporary, moved)  # still there: its inode is not reused
    Path(restore.temporary).write_bytes(b"someone else's")

    InFlightRestores(repository).recover()

    assert Path(restore.temporary).read_bytes() == b"someone else's"
    assert moved.exists()
    assert "is no longer the restore's temporary file; left alone" in job_log(repository)


@pytest.mark.parametrize("names", ["the-target", "no-suffix"])
def test_a_record_naming_anything_but_a_temporary_file_removes_nothing(
    tmp_path: Path, repository: Repository, names: str
) -> None:
    target = tmp_path / "restore" / "vm.raw"
    target.write_bytes(b"old content")
    temporary = target if names == "the-target" else target.with_name(".vm.raw.tmp")
    temporary.write_bytes(b"old content")
    info = temporary.stat()
    restore = InFlight(
        "restore-vm-a-1", "vm-a", str(target), str(temporary), info.st_dev, info.st_ino
    )
    InFlightRestores(repository).record(restore)

    InFlightRestores(repository).recover()

    assert target.read_bytes() == temporary.read_bytes() == b"old content"
    assert "is not a restore's temporary file; left alone" in job_log(repository)


def test_a_temporary_file_already_gone_and_a_damaged_record(
    tmp_path: Path, repository: Repository
) -> None:
    restore = in_flight(tmp_path, tmp_path / "restore" / "vm.raw")
    records = InFlightRestores(repository)
    records.record(restore)
    os.unlink(restore.temporary)
    (records.directory / "restore-vm-a-2.yaml").write_text("operation: [")

    records.recover()

    assert f"temporary file {restore.temporary} was already gone" in job_log(repository)
    assert list(records.directory.iterdir()) == []
