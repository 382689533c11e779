"""The revision cache on real job directories: what other writers change is seen, and what
did not change is not read again."""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from lifeboat import clock
from lifeboat.manifest import Manifest
from lifeboat.repository import JobDirectory, Repository, RevisionMeta
from lifeboat.revision import Trust
from lifeboat.revision_cache import SWEEP_INTERVAL, RevisionCache

BLOCK_SIZE = 16 * 1024
SIZE = 4 * BLOCK_SIZE


def commit(job: JobDirectory, tags: tuple[str, ...] = ("daily",)) -> RevisionMeta:
    """A real revision (an image of holes, its manifest, its `.rev`), as a backup writes it."""
    with job.lock(), job.begin(job.new_revision_id()) as writer:
        writer.start_from(None, SIZE)
        meta = RevisionMeta(
            id=writer.revision_id,
            job=job.name,
            timestamp=clock.now(),
            tags=list(tags),
            size=SIZE,
            block_size=BLOCK_SIZE,
        )
        return writer.commit(meta, Manifest(BLOCK_SIZE, SIZE))


def age(job: JobDirectory) -> None:
    """Stamp the job's directory and files an hour old, as after a quiet hour: nothing in
    it changed so recently that its timestamp could hide a second change."""
    hour_ago = time.time_ns() - 3600 * 10**9
    for path in [*job.path.iterdir(), job.path]:
        os.utime(path, ns=(hour_ago, hour_ago), follow_symlinks=False)


@pytest.fixture
def repository(tmp_path: Path) -> Repository:
    repository = Repository(tmp_path / "repo")
    repository.create()
    return repository


def test_lists_what_the_job_directory_lists(repository: Repository) -> None:
    job = repository.job("vm-a")
    first, second = commit(job), commit(job, ("daily", "manual:keep"))
    listing = RevisionCache().listing(repository.job("vm-a"))
    assert listing is not None
    assert listing.revisions == tuple(job.revisions())
    assert (listing.last, listing.last_good) == (second, second)
    assert listing.tag_times == {"daily": second.timestamp, "manual:keep": second.timestamp}
    assert first.timestamp <= second.timestamp


def test_a_job_without_a_directory_has_no_listing(repository: Repository) -> None:
    assert RevisionCache().listing(repository.job("vm-nowhere")) is None


def test_a_rev_rewritten_by_another_writer_is_seen_and_nothing_else_read_again(
    repository: Repository,
) -> None:
    job = repository.job("vm-a")
    revisions = [commit(job) for _ in range(3)]
    age(job)
    cache = RevisionCache()
    before = cache.listing(job)
    assert before is not None

    restored = Repository(repository.base_dir).job("vm-a")  # another writer's own objects
    with restored.lock():
        restored.update(replace(revisions[1], trust=Trust.DISTRUSTED))

    after = cache.listing(job)
    assert after is not None
    assert [meta.trust for meta in after.revisions] == [
        Trust.TRUSTED,
        Trust.DISTRUSTED,
        Trust.TRUSTED,
    ]
    assert after.last_good == revisions[2]
    assert after.revisions[0] is before.revisions[0]
    assert after.revisions[2] is before.revisions[2]


def test_a_change_right_after_a_look_is_seen(repository: Repository) -> None:
    """Without aging: the directory changes within moments of the cache's last look."""
    job = repository.job("vm-a")
    first = commit(job)
    cache = RevisionCache()
    assert cache.listing(job) is not None
    second = commit(Repository(repository.base_dir).job("vm-a"))
    listing = cache.listing(job)
    assert listing is not None and listing.revisions == (first, second)


def test_a_revision_deleted_by_hand_is_seen(repository: Repository) -> None:
    job = repository.job("vm-a")
    revisions = [commit(job) for _ in range(3)]
    age(job)
    cache = RevisionCache()
    assert cache.listing(job) is not None

    job.rev_path(revisions[1].id).unlink()
    job.image_path(revisions[1].id).unlink()
    listing = cache.listing(job)
    assert listing is not None and listing.revisions == (revisions[0], revisions[2])

    for path in job.path.iterdir():
        path.unlink()
    job.path.rmdir()
    assert cache.listing(job) is None


def test_a_rev_edited_in_place_is_seen_by_a_sweep_in_the_background(
    repository: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit that changes no directory entry shows once SWEEP_INTERVAL has passed: until
    then, looks cost one stat of the directory and read nothing; then the look that
    notices answers at once and leaves the sweep to a thread of the cache's own."""
    now = [clock.now()]
    monkeypatch.setattr(clock, "now", lambda: now[0])
    job = repository.job("vm-a")
    meta = commit(job)
    age(job)
    cache = RevisionCache()
    assert cache.listing(job) is not None

    path = job.rev_path(meta.id)
    edited = path.read_text().replace("tags: [daily]", "tags: [daily, 'manual:kept']")
    with path.open("r+") as rev:  # same file, same directory entry
        rev.write(edited)

    def tags() -> list[str]:
        listing = cache.listing(job)
        assert listing is not None
        return listing.revisions[0].tags

    assert tags() == ["daily"]
    now[0] += SWEEP_INTERVAL
    assert tags() == ["daily"]
    deadline = time.monotonic() + 10
    while tags() != ["daily", "manual:kept"]:
        assert time.monotonic() < deadline, "the background sweep never read the edit"
        time.sleep(0.01)


def test_own_writes_are_seen_at_once(repository: Repository) -> None:
    job = repository.job("vm-a")
    first, second = commit(job), commit(job)
    cache = RevisionCache(sweep_interval=dt.timedelta(days=1))
    assert cache.listing(job) is not None
    retagged = replace(first, tags=["manual:keep"])
    with job.lock():
        job.update(retagged)
        cache.remember(job, retagged)
        job.delete(second.id)
        cache.forget(job, second.id)
    listing = cache.listing(job)
    assert listing is not None and listing.revisions == (retagged,)


def test_bytes_used_is_what_the_files_allocate(repository: Repository) -> None:
    job = repository.job("vm-a")
    commit(job)
    with (job.path / "data").open("wb") as data:
        data.write(os.urandom(BLOCK_SIZE * 8))
        os.fsync(data.fileno())
    listing = RevisionCache().listing(job)
    allocated = sum(
        path.lstat().st_blocks * 512 for path in job.path.iterdir() if not path.is_symlink()
    )
    assert listing is not None and listing.bytes_used == allocated >= BLOCK_SIZE * 8
