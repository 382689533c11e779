"""The scheduler of the whole fleet: one HostScheduler per host, the config, reloads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence

from lifeboat import config as config_module
from lifeboat.bounds import clip
from lifeboat.clock import SYSTEM, Clock
from lifeboat.config import Config, HostConfig
from lifeboat.errors import InvalidArgument, NotFound
from scheduler import planner
from scheduler.host_scheduler import HostScheduler
from scheduler.hosts import BackupOperation, HostClientFactory
from scheduler.planner import JobChanges, JobView
from scheduler.settings import SchedulerSettings

log = logging.getLogger("lifeboat.scheduler")


def _same_peers(old: HostConfig, new: HostConfig) -> bool:
    return old.backupd == new.backupd and old.restored == new.restored


class Scheduler:
    """Keeps no state of its own: everything comes from the config and the hosts."""

    def __init__(
        self,
        config: Config,
        clients: HostClientFactory,
        settings: SchedulerSettings,
        clock: Clock = SYSTEM,
    ) -> None:
        self.config = config
        self.clients = clients
        self.settings = settings
        self.clock = clock
        self.hosts: dict[str, HostScheduler] = {}
        self._started = False
        self._reloading = asyncio.Lock()
        # Told of every config applied, so the server's roles and certificates follow.
        self.on_apply: Callable[[Config], None] = lambda config: None
        for name, host in config.hosts.items():
            self.hosts[name] = self._host_scheduler(host)
            self.hosts[name].set_jobs(config.jobs_on(name))

    def _host_scheduler(self, host: HostConfig) -> HostScheduler:
        return HostScheduler(host, self.clients(host), self.settings, self.clock)

    async def _new_host_schedulers(self, hosts: Iterable[HostConfig]) -> dict[str, HostScheduler]:
        """Host schedulers for `hosts`, not started; none at all when one cannot be made."""
        made: dict[str, HostScheduler] = {}
        try:
            for host in hosts:
                made[host.name] = self._host_scheduler(host)
        except BaseException:
            await asyncio.gather(*(scheduler.stop() for scheduler in made.values()))
            raise
        return made

    def start(self) -> None:
        for host in self.hosts.values():
            host.start()
        self._started = True
        log.info("scheduling %d jobs on %d hosts", len(self.config.jobs), len(self.hosts))

    async def stop(self) -> None:
        await asyncio.gather(*(host.stop() for host in self.hosts.values()))
        self._started = False

    # -- queries ----------------------------------------------------------------------------

    def _host_of(self, job: str) -> HostScheduler:
        if not job:
            raise InvalidArgument("job", "required")
        if job not in self.config.jobs:
            raise NotFound(f"no job named {clip(job)} in {self.config.path}")
        return self.hosts[self.config.jobs[job].host]

    def views(self, host: str = "") -> list[JobView]:
        if host and host not in self.hosts:
            raise InvalidArgument("host", f"no host named {clip(host)} in {self.config.path}")
        chosen = [self.hosts[host]] if host else list(self.hosts.values())
        views = [view for scheduler in chosen for view in scheduler.views()]
        return sorted(views, key=lambda view: view.job.name)

    def view(self, job: str) -> JobView:
        return self._host_of(job).view(job)

    # -- actions ----------------------------------------------------------------------------

    async def run_job(self, job: str, tags: Sequence[str]) -> tuple[BackupOperation, bool]:
        return await self._host_of(job).run_now(job, tags)

    async def reload(self) -> JobChanges:
        """Re-read the config file. Whatever goes wrong is a ConfigError naming the file."""
        async with self._reloading:
            path = self.config.path
            try:
                new = await asyncio.to_thread(config_module.load, path)
                return await self.apply(new)
            except Exception as error:
                raise config_module.reload_error(path, error) from error

    async def apply(self, new: Config) -> JobChanges:
        """Schedule `new`'s jobs: added jobs start, removed jobs stop being scheduled
        (their data and any running backup stay), changed jobs take effect. Every host
        is scanned again."""
        changes = planner.diff_jobs(self.config.jobs, new.jobs)
        if new.scheduler_listen != self.config.scheduler_listen:
            log.warning(
                "scheduler.listen changed to %s: takes effect at the next restart",
                new.scheduler_listen,
            )
        kept = {
            name: scheduler
            for name, scheduler in self.hosts.items()
            if name in new.hosts and _same_peers(scheduler.host, new.hosts[name])
        }
        # Made first: when one cannot be made, nothing has changed yet.
        added = await self._new_host_schedulers(
            host for name, host in new.hosts.items() if name not in kept
        )
        stale = [scheduler for name, scheduler in self.hosts.items() if name not in kept]
        for name, scheduler in kept.items():
            scheduler.host = new.hosts[name]
        self.hosts = {name: kept.get(name) or added[name] for name in new.hosts}
        if self._started:
            for scheduler in added.values():
                scheduler.start()
        for name, scheduler in self.hosts.items():
            scheduler.set_jobs(new.jobs_on(name))
        self.config = new
        self.on_apply(new)
        # Stopped last, so every query in the meantime sees one consistent config.
        await asyncio.gather(*(scheduler.stop() for scheduler in stale))
        log.info(
            "config reloaded: %d jobs added (%s), %d removed (%s), %d changed (%s)",
            len(changes.added),
            ",".join(changes.added),
            len(changes.removed),
            ",".join(changes.removed),
            len(changes.changed),
            ",".join(changes.changed),
        )
        return changes
