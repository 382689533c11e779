"""The repository: job directories, revision metadata and the crash-safe commit protocol."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from lifeboat import clock
from lifeboat.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from lifeboat.manifest import Manifest, digest_file
from lifeboat.repository import (
    REVISION_ID,
    STEPS,
    JobDirectory,
    Repository,
    RevisionDamaged,
    RevisionMeta,
)
from lifeboat.revision import Against, Trust, Verification, VerificationState

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
BLOCK_SIZE = 16 * 1024
SIZE = 4 * MiB + 1000  # the last block is short
FIXED_TIME = dt.datetime(2026, 11, 26, 19, 32, tzinfo=dt.UTC)


def _random_writes(seed: int, layout: dict[int, int]) -> dict[int, bytes]:
    rng = random.Random(seed)
    return {offset: rng.randbytes(length) for offset, length in layout.items()}


FIRST_WRITES = _random_writes(1, {0: 100_000, MiB + 5: 300_000, SIZE - 1000: 1000})
SECOND_WRITES = _random_writes(2, {50_000: 20_000, 2 * MiB: BLOCK_SIZE})
THIRD_WRITES = _random_writes(3, {3 * MiB + 7: 9000})


def content(*layers: dict[int, bytes], size: int = SIZE) -> bytes:
    """The image after applying `layers` of writes, in order, to zeros."""
    image = bytearray(size)
    for writes in layers:
        for offset, data in writes.items():
            image[offset : offset + len(data)] = data
    return bytes(image[:size])


def commit_revision(
    job: JobDirectory,
    writes: dict[int, bytes],
    parent: RevisionMeta | None = None,
    tags: tuple[str, ...] = ("daily",),
    on_step: Callable[[str], None] | None = None,
) -> RevisionMeta:
    """Write and commit a revision the way a backup does (the caller holds the lock)."""
    revision_id = job.new_revision_id()
    with job.begin(revision_id) as writer:
        writer.start_from(parent, SIZE)
        with open(writer.image_tmp_path, "r+b") as image:
            for offset, data in writes.items():
                image.seek(offset)
                image.write(data)
        meta = RevisionMeta(
            id=revision_id,
            job=job.name,
            timestamp=clock.now(),
            parent=parent.id if parent else None,
            tags=list(tags),
            size=SIZE,
            block_size=BLOCK_SIZE,
            source={"type": "file", "path": "/var/lib/images/test.raw"},
            stats={"bytes-written": sum(len(data) for data in writes.values())},
        )
        return writer.commit(meta, digest_file(writer.image_tmp_path, BLOCK_SIZE), on_step)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_consistent(job: JobDirectory, meta: RevisionMeta) -> None:
    """The image matches its manifest, and both match the metadata."""
    manifest = Manifest.read(job.sums_path(meta.id))
    assert (manifest.size, manifest.block_size) == (meta.size, meta.block_size)
    assert os.stat(job.image_path(meta.id)).st_size == meta.size
    assert digest_file(job.image_path(meta.id), meta.block_size) == manifest


def revision_files(meta: RevisionMeta) -> set[str]:
    return {meta.id, f"{meta.id}.sums", f"{meta.id}.rev"}


def link(job: JobDirectory, name: str) -> str | None:
    try:
        return os.readlink(job.path / name)
    except FileNotFoundError:
        return None


@pytest.fixture
def job(tmp_path: Path) -> JobDirectory:
    return Repository(tmp_path).job("vm-web01")


@pytest.fixture(params=["tmp", "xfs"])
def base_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A repository directory on tmp_path (no reflinks here) or on the XFS loop mount."""
    if request.param == "xfs":
        path: Path = request.getfixturevalue("xfs_dir")
        return path
    return tmp_path


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> dt.datetime:
    monkeypatch.setattr(clock, "now", lambda: FIXED_TIME)
    return FIXED_TIME


# --- names ----------------------------------------------------------------------------

VALID_JOB_NAMES = ["a", "0", "vm-web01", "A.b_c-d", "_underscore", "x" * 64, "trailing-."]
INVALID_JOB_NAMES = [
    "",
    ".",
    "..",
    ".hidden",
    "-flag",
    "x" * 65,
    "a/b",
    "../up",
    "a b",
    "tab\t",
    "new\nline",
    "umlaut-ü",
    "colon:",
    "star*",
]


@pytest.mark.parametrize("name", VALID_JOB_NAMES)
def test_valid_job_names(tmp_path: Path, name: str) -> None:
    assert Repository(tmp_path).job(name).path == tmp_path / name


@pytest.mark.parametrize("name", INVALID_JOB_NAMES)
def test_invalid_job_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        Repository(tmp_path).job(name)
    assert raised.value.field == "job"


def test_job_names_lists_job_directories_only(tmp_path: Path) -> None:
    for name in ("vm-b", "vm-a", ".hidden", "-odd"):
        (tmp_path / name).mkdir()
    (tmp_path / "a-file").write_text("")
    assert Repository(tmp_path).job_names() == ["vm-a", "vm-b"]
    assert Repository(tmp_path / "missing").job_names() == []


def test_new_revision_id_uses_the_clock(job: JobDirectory, frozen_clock: dt.datetime) -> None:
    revision_id = job.new_revision_id()
    assert REVISION_ID.fullmatch(revision_id)
    assert revision_id.startswith("20261126T193200Z-")


def test_new_revision_ids_of_one_second_are_unique_and_ordered(
    job: JobDirectory, frozen_clock: dt.datetime
) -> None:
    job.path.mkdir()
    ids = []
    for _ in range(100):
        ids.append(job.new_revision_id())
        (job.path / f".{ids[-1]}.tmp").write_bytes(b"")  # even leftovers count
    assert ids == sorted(set(ids))


def test_new_revision_id_converts_to_utc(
    job: JobDirectory, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = dt.datetime(2026, 11, 26, 20, 32, 5, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    monkeypatch.setattr(clock, "now", lambda: local)
    assert job.new_revision_id().startswith("20261126T193205Z-")


# --- metadata -------------------------------------------------------------------------


def example_meta() -> RevisionMeta:
    return RevisionMeta(
        id="20261126T193200Z-3f9a",
        job="vm-web01",
        timestamp=FIXED_TIME,
        parent="20261126T183200Z-0b1c",
        tags=["daily", "hourly"],
        size=4294967296,
        source={"type": "file", "path": "/var/lib/images/vm-web01.raw"},
        stats={"bytes-read": 1, "duration": 12.5, "full": False},
        verification=Verification(
            VerificationState.PASSED,
            Against.SOURCE,
            time=FIXED_TIME,
            blocks_checked=13,
            blocks_total=262144,
            checked_runs=((0, 5), (100, 8)),
        ),
    )


def test_meta_yaml_has_the_documented_keys_and_round_trips() -> None:
    meta = example_meta()
    text = meta.to_yaml()
    assert list(yaml.safe_load(text)) == [
        "version",
        "id",
        "job",
        "timestamp",
        "parent",
        "tags",
        "size",
        "block-size",
        "checksum",
        "trust",
        "source",
        "stats",
        "verification",
    ]
    assert "timestamp: 2026-11-26T19:32:00+00:00\n" in text
    assert "tags: [daily, hourly]\n" in text
    assert "block-size: 16384\n" in text
    assert RevisionMeta.from_yaml(text) == meta
    assert (
        meta.good
        and not RevisionMeta.from_yaml(text.replace("trusted", Trust.DISTRUSTED.value)).good
    )


def test_meta_keeps_microseconds_and_null_parent() -> None:
    meta = example_meta()
    meta.timestamp = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    meta.parent = None
    assert RevisionMeta.from_yaml(meta.to_yaml()) == meta


BROKEN_META = {
    "not yaml": "id: [unclosed",
    "a list": "- 1\n- 2\n",
    "missing size": "\n".join(
        line for line in example_meta().to_yaml().splitlines() if not line.startswith("size")
    ),
    "bad trust": example_meta().to_yaml().replace("trust: trusted", "trust: maybe"),
    "bool size": example_meta().to_yaml().replace("size: 4294967296", "size: true"),
    "bad timestamp": example_meta().to_yaml().replace("2026-11-26T19:32:00+00:00", "yesterday"),
    "tags not a list": example_meta().to_yaml().replace("[daily, hourly]", "daily"),
}


@pytest.mark.parametrize("case", BROKEN_META)
def test_broken_meta_is_data_loss(case: str) -> None:
    with pytest.raises(DataLoss):
        RevisionMeta.from_yaml(BROKEN_META[case])


def test_a_corrupt_rev_file_is_damage_naming_it(job: JobDirectory) -> None:
    with job.lock():
        first = commit_revision(job, FIRST_WRITES)
    job.rev_path(first.id).write_text("id: [")
    with pytest.raises(RevisionDamaged, match=str(job.rev_path(first.id))):
        job.revision(first.id)


# --- commit ---------------------------------------------------------------------------


def test_commit_round_trip(job: JobDirectory) -> None:
    with job.lock():
        committed = commit_revision(job, FIRST_WRITES)
    assert job.revisions() == [committed]
    assert job.revision(committed.id) == committed
    assert job.revision("last") == job.last() == committed
    assert job.image_path(committed.id).read_bytes() == content(FIRST_WRITES)
    assert_consistent(job, committed)
    assert link(job, "last") == committed.id
    assert link(job, "last.rev") == f"{committed.id}.rev"
    assert RevisionMeta.from_yaml(job.rev_path(committed.id).read_text()) == committed
    assert set(os.listdir(job.path)) == {".lock", "last", "last.rev", *revision_files(committed)}


def test_a_full_backup_starts_sparse(job: JobDirectory) -> None:
    with job.lock(), job.begin(job.new_revision_id()) as writer:
        assert writer.start_from(None, 1 << 30) is False
        info = os.stat(writer.image_tmp_path)
        assert (info.st_size, info.st_blocks) == (1 << 30, 0)


def test_revisions_are_oldest_first_and_last_is_newest(job: JobDirectory) -> None:
    committed = []
    with job.lock():
        for writes in (FIRST_WRITES, SECOND_WRITES, THIRD_WRITES):
            committed.append(commit_revision(job, writes, parent=job.last()))
            assert link(job, "last") == committed[-1].id
    assert job.revisions() == committed
    assert [meta.parent for meta in committed] == [None, committed[0].id, committed[1].id]
    assert job.image_path(committed[2].id).read_bytes() == content(
        FIRST_WRITES, SECOND_WRITES, THIRD_WRITES
    )


def test_start_from_reflinks_on_xfs_only(tmp_path: Path, xfs_dir: Path) -> None:
    for base, expected in ((tmp_path, False), (xfs_dir, True)):
        job = Repository(base).job("vm")
        with job.lock():
            first = commit_revision(job, FIRST_WRITES)
            with job.begin(job.new_revision_id()) as writer:
                assert writer.start_from(first, SIZE) is expected
                assert writer.image_tmp_path.read_bytes() == content(FIRST_WRITES)


def test_start_from_resizes(job: JobDirectory) -> None:
    with job.lock():
        first = commit_revision(job, FIRST_WRITES)
        for size in (SIZE + 3 * MiB, 2 * MiB):
            with job.begin(job.new_revision_id()) as writer:
                writer.start_from(first, size)
                assert writer.image_tmp_path.read_bytes() == content(FIRST_WRITES, size=size)


def test_a_distrusted_revision_is_never_a_parent(job: JobDirectory) -> None:
    with job.lock():
        first = commit_revision(job, FIRST_WRITES)
        first.trust = Trust.DISTRUSTED
        job.update(first)
        with job.begin(job.new_revision_id()) as writer, pytest.raises(FailedPrecondition):
            writer.start_from(job.revision(first.id), SIZE)


def test_readers_never_see_a_revision_before_its_rev(job: JobDirectory) -> None:
    reader = Repository(job.path.parent).job(job.name)
    seen: dict[str, tuple[list[str], str]] = {}

    def observe(step: str) -> None:
        seen[step] = ([meta.id for meta in reader.revisions()], link(reader, "last") or "")

    with job.lock():
        first = commit_revision(job, FIRST_WRITES)
        second = commit_revision(job, SECOND_WRITES, parent=first, on_step=observe)
    old, both = [first.id], [first.id, second.id]
    assert seen == {
        "fsync-data": (old, first.id),
        "rename-data": (old, first.id),
        "write-rev": (old, first.id),
        "fsync-dir": (both, first.id),
        "update-last": (both, first.id),
        "done": (both, second.id),
    }


def test_commit_checks_what_it_commits(job: JobDirectory) -> None:
    with job.lock(), job.begin(job.new_revision_id()) as writer:
        writer.start_from(None, SIZE)
        manifest = digest_file(writer.image_tmp_path, BLOCK_SIZE)
        meta = RevisionMeta(id=writer.revision_id, job=job.name, timestamp=clock.now(), size=SIZE)
        with pytest.raises(InvalidArgument):  # wrong block size for this manifest
            writer.commit(RevisionMeta(**{**vars(meta), "block_size": 4096}), manifest)
        with pytest.raises(InvalidArgument):
            writer.commit(RevisionMeta(**{**vars(meta), "job": "other"}), manifest)
        with pytest.raises(InvalidArgument):
            writer.commit(RevisionMeta(**{**vars(meta), "id": job.new_revision_id()}), manifest)
        os.truncate(writer.image_tmp_path, SIZE - 1)
        with pytest.raises(FailedPrecondition):
            writer.commit(meta, manifest)
        os.truncate(writer.image_tmp_path, SIZE)
        writer.commit(meta, manifest)
        with pytest.raises(FailedPrecondition):
            writer.commit(meta, manifest)
        writer.abort()  # a no-op once committed
    assert job.revisions() == [meta]


def test_abort_and_failure_leave_nothing(job: JobDirectory) -> None:
    with job.lock():
        first = commit_revision(job, FIRST_WRITES)
        with pytest.raises(RuntimeError), job.begin(job.new_revision_id()) as writer:
            writer.start_from(first, SIZE)
            raise RuntimeError("source went away")
        with job.begin(job.new_revision_id()) as writer:
            writer.start_from(first, SIZE)
            writer.abort()
    assert set(os.listdir(job.path)) == {".lock", "last", "last.rev", *revision_files(first)}


def test_begin_refuses_an_existing_id(job: JobDirectory) -> None:
    with job.lock():
        first = commit_revision(job, FIRST_WRITES)
        with pytest.raises(AlreadyExists):
            job.begin(first.id)
        with pytest.raises(InvalidArgument):
            job.begin("not-an-id")


# --- reading --------------------------------------------------------------------------


def test_an_empty_job(job: JobDirectory) -> None:
    assert job.revisions() == []
    assert job.last() is None
    with pytest.raises(NotFound):
        job.revision("last")
    with pytest.raises(NotFound):
        job.revision("20261126T193200Z-3f9a")
    with pytest.raises(InvalidArgument):
        job.revision("../../etc/passwd")


# --- the lock -------------------------------------------------------------------------


def test_lock_excludes_a_second_writer(job: JobDirectory) -> None:
    other = Repository(job.path.parent).job(job.name)
    with job.lock(blocking=False):
        assert job.locked
        with pytest.raises(FailedPrecondition, match="locked"):
            other.lock(blocking=False).__enter__()
        with pytest.raises(FailedPrecondition):
            job.lock().__enter__()  # not re-entrant
    with other.lock(blocking=False):
        pass
    assert not job.locked


def test_a_blocking_lock_waits(job: JobDirectory) -> None:
    other = Repository(job.path.parent).job(job.name)
    acquired = threading.Event()

    def wait_for_lock() -> None:
        with other.lock(blocking=True):
            acquired.set()

    with job.lock():
        thread = threading.Thread(target=wait_for_lock)
        thread.start()
        assert not acquired.wait(0.3)
    thread.join(5)
    assert acquired.is_set()


def test_writing_needs_the_lock(job: JobDirectory) -> None:
    with job.lock():
        first = commit_revision(job, FIRST_WRITES)
        writer = job.begin(job.new_revision_id())
    for action in (
        lambda: job.begin(job.new_revision_id()),
        job.recover,
        lambda: job.delete(first.id),
        lambda: job.update(first),
        lambda: job.write_job_file({"a": 1}),
        lambda: writer.start_from(None, 10),
    ):
        with pytest.raises(FailedPrecondition, match="lock"):
            action()


def test_lock_without_a_repository(tmp_path: Path) -> None:
    job = Repository(tmp_path / "missing").job("vm")
    with pytest.raises(FailedPrecondition, match="does not exist"), job.lock():
        pass


# --- update, delete, log, job file ----------------------------------------------------


def test_update_rewrites_rev_atomically(job: JobDirectory) -> None:
    with job.lock():
        first = commit_revision(job, FIRST_WRITES, tags=("a",))
    reader = Repository(job.path.parent).job(job.name)
    valid_tags = [["a"], *([f"t{i}", "daily"] for i in range(100))]
    problems: list[str] = []
    stop = threading.Event()

    reads = 0

    def read_forever() -> None:
        nonlocal reads
        while not stop.wait(0.0002):  # the pause lets the writer have the GIL
            try:
                tags = reader.revision(first.id).tags
            except Exception as error:
                problems.append(repr(error))
                return
            if tags not in valid_tags:
                problems.append(f"torn tags {tags}")
            reads += 1

    thread = threading.Thread(target=read_forever)
    thread.start()
    try:
        with job.lock():
            for tags in valid_tags[1:]:
                first.tags = tags
                job.update(first)
    finally:
        stop.set()
        thread.join()
    assert problems == []
    assert reads > 0
    assert job.revision(first.id).tags == valid_tags[-1]
    assert not [name for name in os.listdir(job.path) if name.endswith(".tmp")]


def test_update_of_an_unknown_or_foreign_revision(job: JobDirectory) -> None:
    with job.lock():
        first = commit_revision(job, FIRST_WRITES)
        with pytest.raises(NotFound):
            job.update(RevisionMeta(**{**vars(first), "id": "20000101T000000Z-0000"}))
        with pytest.raises(InvalidArgument):
            job.update(RevisionMeta(**{**vars(first), "job": "vm-other"}))
        with pytest.raises(InvalidArgument):
            job.update(RevisionMeta(**{**vars(first), "trust": "sort of"}))


def test_delete_keeps_the_other_revisions_identical(base_dir: Path) -> None:
    job = Repository(base_dir).job("vm")
    with job.lock():
        first = commit_revision(job, FIRST_WRITES)
        second = commit_revision(job, SECOND_WRITES, parent=first)
        third = commit_revision(job, THIRD_WRITES, parent=second)
        digests = {meta.id: sha(job.image_path(meta.id)) for meta in (first, third)}

        job.delete(second.id)
        assert job.revisions() == [first, third]
        for meta in (first, third):
            assert sha(job.image_path(meta.id)) == digests[meta.id]
            assert_consistent(job, meta)
        assert link(job, "last") == third.id

        job.delete(third.id)
        assert (job.revisions(), link(job, "last"), link(job, "last.rev")) == (
            [first],
            first.id,
            f"{first.id}.rev",
        )
        assert sha(job.image_path(first.id)) == digests[first.id]

        job.delete(first.id)
        with pytest.raises(NotFound):
            job.delete(first.id)
    assert sorted(os.listdir(job.path)) == [".lock"]


def test_last_is_the_newest_good_revision(job: JobDirectory) -> None:
    with job.lock():
        first = commit_revision(job, FIRST_WRITES)
        second = commit_revision(job, SECOND_WRITES, parent=first)
        job.update(replace(second, trust=Trust.DISTRUSTED))
        assert (link(job, "last"), link(job, "last.rev")) == (first.id, f"{first.id}.rev")
        assert job.last() == first and job.revision("last") == first
        third = commit_revision(job, THIRD_WRITES, parent=first, tags=("hourly",))
        assert link(job, "last") == third.id
        assert job.last("daily") == first and job.last("hourly") == third
        assert job.last(excluded={third.id}) == first
        # A failed verification distrusts, whatever `trust` says.
        job.update(
            replace(third, verification=Verification(VerificationState.FAILED, Against.SOURCE))
        )
        assert link(job, "last") == first.id
        job.update(replace(first, trust=Trust.DISTRUSTED))
        assert (link(job, "last"), link(job, "last.rev"), job.last()) == (None, None, None)
        with pytest.raises(NotFound, match="no good revision"):
            job.revision("last")


def test_a_stale_last_is_repaired_by_a_writer_only_when_the_lock_is_free(
    job: JobDirectory,
) -> None:
    with job.lock():
        first = commit_revision(job, FIRST_WRITES)
        second = commit_revision(job, SECOND_WRITES, parent=first)
    os.unlink(job.path / "last")
    os.symlink(first.id, job.path / "last")
    reader = Repository(job.path.parent).job(job.name)
    assert reader.last() == second, "readers resolve last themselves"
    with job.lock():
        assert reader.repair_last(reader.listing()) is False  # a writer holds the lock
    assert link(job, "last") == first.id
    assert reader.repair_last(reader.listing()) is True
    assert (link(job, "last"), link(job, "last.rev")) == (second.id, f"{second.id}.rev")
    assert reader.repair_last(reader.listing()) is False


def test_append_log(job: JobDirectory, frozen_clock: dt.datetime) -> None:
    job.append_log("backup started")
    job.append_log("backup failed:\nsource vanished")
    assert (job.path / "log").read_text() == (
        "2026-11-26T19:32:00+00:00 backup started\n"
        "2026-11-26T19:32:00+00:00 backup failed: source vanished\n"
    )


def test_job_file(job: JobDirectory) -> None:
    assert job.read_job_file() is None
    data = {"source": {"type": "file", "path": "/x.raw"}, "schedule": "default"}
    with job.lock():
        job.write_job_file(data)
        job.write_job_file({**data, "schedule": "hourly"})
    assert job.read_job_file() == {**data, "schedule": "hourly"}
    assert sorted(os.listdir(job.path)) == [".lock", "job.yaml"]


# --- recovery -------------------------------------------------------------------------


def test_recover_removes_leftovers_and_repoints_last(job: JobDirectory) -> None:
    with job.lock():
        first = commit_revision(job, FIRST_WRITES)
        job.write_job_file({"schedule": "default"})
    job.append_log("ok")
    crashed, orphan = "20261126T200000Z-aaaa", "20261126T210000Z-bbbb"
    leftovers = [
        f".{crashed}.tmp",
        f".{crashed}.sums.tmp",
        f".{crashed}.rev.tmp",
        ".job.yaml.tmp",
        ".reflink-probe-x1y2.tmp",
        orphan,
        f"{orphan}.sums",
    ]
    for name in leftovers:
        (job.path / name).write_bytes(b"junk")
    os.symlink(orphan, job.path / ".last.tmp")
    os.unlink(job.path / "last")
    os.symlink(orphan, job.path / "last")  # stale: no .rev
    with job.lock():
        removed = job.recover()
    assert removed == sorted([*leftovers, ".last.tmp"])
    assert set(os.listdir(job.path)) == {
        ".lock",
        "job.yaml",
        "log",
        "last",
        "last.rev",
        *revision_files(first),
    }
    assert (link(job, "last"), link(job, "last.rev")) == (first.id, f"{first.id}.rev")
    with job.lock():
        assert job.recover() == []


def test_recover_of_a_job_without_revisions_removes_last(job: JobDirectory) -> None:
    job.path.mkdir()
    os.symlink("20261126T200000Z-aaaa", job.path / "last")
    with job.lock():
        assert job.recover() == []
    assert sorted(os.listdir(job.path)) == [".lock"]


# --- crashes at every step of the commit ----------------------------------------------

CRASH_JOB = "vm-crash"


def crash_writer_main(arguments: list[str]) -> None:
    """Run in a child process: commit a second revision, SIGKILL ourselves before `step`."""
    base_dir, step = arguments

    def kill_at(name: str) -> None:
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    job = Repository(base_dir).job(CRASH_JOB)
    with job.lock(blocking=False):
        commit_revision(job, SECOND_WRITES, parent=job.last(), on_step=kill_at)
    sys.exit("not killed")


def run_crash_writer(base_dir: Path, step: str) -> None:
    script = "import sys; from tests.test_repository import crash_writer_main as m; m(sys.argv[1:])"
    result = subprocess.run(
        [sys.executable, "-c", script, str(base_dir), step],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr


@pytest.fixture
def crash_job(base_dir: Path) -> Iterator[tuple[JobDirectory, RevisionMeta]]:
    job = Repository(base_dir).job(CRASH_JOB)
    with job.lock():
        first = commit_revision(job, FIRST_WRITES)
    yield job, first


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_at_any_step_leaves_a_consistent_job(
    crash_job: tuple[JobDirectory, RevisionMeta], step: str
) -> None:
    job, first = crash_job
    first_sha = sha(job.image_path(first.id))
    run_crash_writer(job.path.parent, step)
    committed = STEPS.index(step) > STEPS.index("write-rev")

    # Readers, before any recovery: the new revision is absent or whole, the old intact.
    revisions = job.revisions()
    assert revisions[0] == first
    assert len(revisions) == (2 if committed else 1)
    assert sha(job.image_path(first.id)) == first_sha
    for meta in revisions:
        assert_consistent(job, meta)
    if committed:
        second = revisions[1]
        assert second.parent == first.id
        assert job.image_path(second.id).read_bytes() == content(FIRST_WRITES, SECOND_WRITES)
    last = job.last()
    assert last is not None and last in revisions

    # Recovery leaves exactly the committed revisions and points last at the newest.
    with job.lock(blocking=False):
        removed = job.recover()
    assert bool(removed) == (not committed)
    expected = {".lock", "last", "last.rev"}
    for meta in revisions:
        expected |= revision_files(meta)
    assert set(os.listdir(job.path)) == expected
    assert link(job, "last") == revisions[-1].id
    assert link(job, "last.rev") == f"{revisions[-1].id}.rev"

    # And the next backup works on top of whatever survived.
    with job.lock(blocking=False):
        third = commit_revision(job, THIRD_WRITES, parent=job.last())
    layers = [FIRST_WRITES, SECOND_WRITES] if committed else [FIRST_WRITES]
    assert job.revisions() == [*revisions, third]
    assert link(job, "last") == third.id
    assert job.image_path(third.id).read_bytes() == content(*layers, THIRD_WRITES)
    assert_consistent(job, third)
    assert sha(job.image_path(first.id)) == first_sha
