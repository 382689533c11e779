"""The real backup worker on a repository, driven in-process from one event loop."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from backupd.backup import BackupSettings
from backupd.verify import VerifyLimits
from backupd.worker import BackupWorker, WorkerSettings
from lifeboat.model import Job
from lifeboat.operations import OperationRecord, OperationRegistry


class Harness:
    """The real worker on a repository, driven from one event loop. A job it backs up is
    configured for the worker first, as a config reload would."""

    def __init__(
        self, base_dir: Path, worker_limit: int = 2, verify_fraction: float = 0.05
    ) -> None:
        self.base_dir = base_dir
        self.worker_limit = worker_limit
        self.verify_fraction = verify_fraction
        self.registry = OperationRegistry("backup01")
        self._worker: BackupWorker | None = None

    @property
    def worker(self) -> BackupWorker:
        if self._worker is None:
            self.registry.bind_loop(asyncio.get_running_loop())
            backup = BackupSettings(verify=VerifyLimits(fraction=self.verify_fraction))
            settings = WorkerSettings("backup01", self.base_dir, self.worker_limit, backup)
            self._worker = BackupWorker(settings, self.registry)
        return self._worker

    def configure(self, job: Job) -> None:
        settings = self.worker.settings
        self.worker.reconfigure(replace(settings, jobs={**settings.jobs, job.name: job}))

    async def start(self, job: Job, tags: tuple[str, ...] = ("hourly",)) -> OperationRecord:
        self.configure(job)
        record, started = await self.worker.start_backup(job.name, list(tags))
        assert started
        return record

    async def finish(self, record: OperationRecord) -> OperationRecord:
        async for update in self.registry.watch(record.name):
            record = update
        return record

    async def backup(self, job: Job, tags: tuple[str, ...] = ("hourly",)) -> OperationRecord:
        return await self.finish(await self.start(job, tags))
