"""restored's domain: reading a revision against its manifest, the throughput meter and
marking revisions distrusted (targets: test_restore_targets.py). Revisions come from the
real backup worker."""

from __future__ import annotations

import datetime as dt
import os
import random
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lifeboat.errors import DataLoss
from lifeboat.model import FileSource, Job, Schedule, TagSpec
from lifeboat.operations import OperationState
from lifeboat.repository import Repository, RevisionMeta
from lifeboat.revision import Trust
from restored.distrust import Distruster, Finding
from restored.reader import CorruptRevision, RevisionReader
from restored.throughput import FILE_NAME, ThroughputMeter
from tests.support.harness import Harness
from tests.support.images import flip_byte

KiB = 1024
MiB = 1024 * KiB
BLOCK = 16 * KiB
SCHEDULE = Schedule(
    "default",
    (TagSpec("hourly", dt.timedelta(hours=1), 24), TagSpec("daily", dt.timedelta(days=1), 7)),
)


def write_image(path: Path, size: int, extents: list[tuple[int, int]], seed: int = 1) -> bytes:
    """A sparse image of `size` bytes with random data at each (offset, length)."""
    rng = random.Random(seed)
    with path.open("wb") as image:
        image.truncate(size)
        for offset, length in extents:
            image.seek(offset)
            image.write(rng.randbytes(length))
    return path.read_bytes()


def file_job(name: str, source: Path, restore_within: dt.timedelta | None = None) -> Job:
    return Job(name, "backup01", SCHEDULE, FileSource(str(source)), restore_within=restore_within)


async def back_up(harness: Harness, job: Job, tags: tuple[str, ...] = ("hourly",)) -> str:
    record = await harness.backup(job, tags)
    assert record.state == OperationState.SUCCEEDED, record.error
    return record.revision_id


# --- reading against the manifest ----------------------------------------------------


async def test_reader_yields_identical_data_and_skips_holes(tmp_path: Path) -> None:
    size = 4 * MiB + 5 * KiB  # a short last block
    content = write_image(
        tmp_path / "vm.raw", size, [(0, 100 * KiB), (2 * MiB, 64 * KiB), (size - 3 * KiB, 3 * KiB)]
    )
    harness = Harness(tmp_path / "repo")
    revision_id = await back_up(harness, file_job("vm", tmp_path / "vm.raw"))
    job_dir = Repository(tmp_path / "repo").job("vm")
    # A zero block inside a data extent must come out as zeros, not as data.
    image = job_dir.image_path(revision_id)
    with image.open("r+b") as stored:
        stored.seek(BLOCK)
        stored.write(bytes(BLOCK))
    content = content[:BLOCK] + bytes(BLOCK) + content[2 * BLOCK :]
    manifest_path = job_dir.sums_path(revision_id)
    from lifeboat.manifest import Manifest, zero_digest

    manifest = Manifest.read(manifest_path)
    manifest.set_digest(1, zero_digest(BLOCK))
    manifest.write(manifest_path)

    rebuilt = bytearray(size)
    data_pieces = 0
    with RevisionReader(job_dir, job_dir.revision(revision_id)) as reader:
        assert reader.data_bytes < size // 2
        for chunk in reader.chunks(bytearray(256 * KiB)):
            for piece in chunk.pieces:
                if piece.data is not None:
                    rebuilt[piece.offset : piece.offset + piece.length] = piece.data
                    data_pieces += 1
                    assert piece.data.tobytes() != bytes(piece.length)
    assert bytes(rebuilt) == content
    assert data_pieces >= 3


@pytest.mark.parametrize(
    ("damage", "bad_offset"),
    [
        pytest.param("flip-data", 2 * MiB + BLOCK, id="flipped-byte-in-data"),
        pytest.param("punch-data", 0, id="data-became-a-hole"),
    ],
)
async def test_reader_detects_damage(tmp_path: Path, damage: str, bad_offset: int) -> None:
    write_image(tmp_path / "vm.raw", 4 * MiB, [(0, 64 * KiB), (2 * MiB, 64 * KiB)])
    harness = Harness(tmp_path / "repo")
    revision_id = await back_up(harness, file_job("vm", tmp_path / "vm.raw"))
    job_dir = Repository(tmp_path / "repo").job("vm")
    image = job_dir.image_path(revision_id)
    if damage == "flip-data":
        flip_byte(image, bad_offset + 100)
    else:
        from lifeboat.blockio import punch_hole

        fd = os.open(image, os.O_RDWR)
        try:
            punch_hole(fd, 0, 64 * KiB)
        finally:
            os.close(fd)
    with (
        RevisionReader(job_dir, job_dir.revision(revision_id)) as reader,
        pytest.raises(CorruptRevision) as raised,
    ):
        for _ in reader.chunks(bytearray(MiB)):
            pass
    assert bad_offset in raised.value.offsets
    assert str(bad_offset) in str(raised.value)


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        pytest.param(lambda data: data[:-1], "bytes, expected", id="truncated"),
        pytest.param(lambda data: b"garbage" + data, "not a xxh3-128 manifest", id="header"),
        pytest.param(lambda data: data.replace(b" 16384 ", b" 4096 ", 1), "bytes", id="geometry"),
    ],
)
async def test_reader_refuses_a_damaged_manifest(
    tmp_path: Path, damage: Callable[[bytes], bytes], words: str
) -> None:
    write_image(tmp_path / "vm.raw", MiB, [(0, 64 * KiB)])
    harness = Harness(tmp_path / "repo")
    revision_id = await back_up(harness, file_job("vm", tmp_path / "vm.raw"))
    job_dir = Repository(tmp_path / "repo").job("vm")
    sums = job_dir.sums_path(revision_id)
    sums.write_bytes(damage(sums.read_bytes()))
    # Listings see it as damaged; the reader refuses it too, should it change after that.
    with pytest.raises(DataLoss, match=words):
        RevisionReader(job_dir, job_dir.metadata(revision_id))


async def test_reader_keeps_reading_a_revision_deleted_meanwhile(tmp_path: Path) -> None:
    content = write_image(tmp_path / "vm.raw", 2 * MiB, [(0, 2 * MiB)])
    harness = Harness(tmp_path / "repo")
    revision_id = await back_up(harness, file_job("vm", tmp_path / "vm.raw"))
    job_dir = Repository(tmp_path / "repo").job("vm")
    with RevisionReader(job_dir, job_dir.revision(revision_id)) as reader:
        with job_dir.lock():
            job_dir.delete(revision_id)
        assert not job_dir.image_path(revision_id).exists()
        rebuilt = b"".join(
            piece.data.tobytes()
            for chunk in reader.chunks(bytearray(MiB))
            for piece in chunk.pieces
            if piece.data is not None
        )
    assert rebuilt == content


# --- throughput -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "rate"),
    [
        pytest.param([], 0.0, id="unmeasured"),
        pytest.param([(100 * MiB, 1.0)], 100 * MiB, id="one"),
        pytest.param([(100 * MiB, 1.0), (300 * MiB, 1.0)], 200 * MiB, id="byte-weighted"),
        pytest.param([(KiB, 0.001)], 0.0, id="too-small-to-count"),
        pytest.param([(MiB, 1.0)] * 5 + [(10 * MiB, 1.0)] * 10, 10 * MiB, id="last-ten"),
    ],
)
def test_throughput_meter(tmp_path: Path, samples: list[tuple[int, float]], rate: float) -> None:
    meter = ThroughputMeter(tmp_path / FILE_NAME)
    for data_bytes, seconds in samples:
        meter.record(data_bytes, seconds)
    assert meter.bytes_per_second() == pytest.approx(rate)
    assert ThroughputMeter(tmp_path / FILE_NAME).bytes_per_second() == pytest.approx(rate)
    predicted = meter.predict(50 * MiB)
    if rate:
        assert predicted is not None
        assert predicted.total_seconds() == pytest.approx(50 * MiB / rate)
    else:
        assert predicted is None


def test_throughput_file_is_private(tmp_path: Path) -> None:
    leftover = tmp_path / f"{FILE_NAME}.tmp"
    leftover.write_text("old")
    os.chmod(leftover, 0o644)
    old_umask = os.umask(0o022)
    try:
        ThroughputMeter(tmp_path / FILE_NAME).record(100 * MiB, 1.0)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / FILE_NAME).stat().st_mode) == 0o600
    assert not leftover.exists()


def test_throughput_meter_ignores_a_damaged_file(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text("samples: [{data-bytes: lots}]\n")
    assert ThroughputMeter(tmp_path / FILE_NAME).bytes_per_second() == 0.0


# --- distrust -------------------------------------------------------------------------


async def test_distrust_waits_for_a_held_lock_in_the_background(tmp_path: Path) -> None:
    write_image(tmp_path / "vm.raw", MiB, [(0, MiB)])
    harness = Harness(tmp_path / "repo")
    revision_id = await back_up(harness, file_job("vm", tmp_path / "vm.raw"))
    repository = Repository(tmp_path / "repo")
    distruster = Distruster(repository, retry_interval=0.05)
    finding = Finding("vm", revision_id, (BLOCK,), 2, 64)
    backup = repository.job("vm")
    try:
        with backup.lock():  # as a running backup would
            started = time.monotonic()
            outcome = distruster.distrust(finding)
            assert time.monotonic() - started < 1.0
            assert "once the running backup releases" in outcome
            assert distruster.is_pending("vm", revision_id)
            assert repository.job("vm").revision(revision_id).trust == Trust.TRUSTED
        deadline = time.monotonic() + 10
        while distruster.is_pending("vm", revision_id) and time.monotonic() < deadline:
            time.sleep(0.02)
        meta: RevisionMeta = repository.job("vm").revision(revision_id)
        assert meta.trust == Trust.DISTRUSTED
        assert meta.verification.mismatched_offsets == (BLOCK,)
        log = (repository.job("vm").path / "log").read_text()
        assert f"revision {revision_id} not matching its manifest" in log
    finally:
        distruster.stop()
