"""The monitor itself: the poller, reports from its snapshot, and the HTTP endpoints.

`/check` answers the Nagios line (status 200 for OK and WARNING, 503 for
CRITICAL and UNKNOWN, so `check_http` can use it); `/metrics` is the Prometheus
exposition of the whole fleet. `/check` takes the optional `job` and `host`
filters of CheckSla as query parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from lifeboat.clock import SYSTEM, Clock
from lifeboat.config import Config
from lifeboat.errors import InvalidArgument, NotFound
from lifeboat.sla import SlaState
from monitor import metrics
from monitor.http import HttpServer, Response
from monitor.poller import Poller, Source
from monitor.report import PLUGIN, CheckResult, SlaReport, build_report, check

log = logging.getLogger("lifeboat.monitor")

CHECK_FILTERS = frozenset({"job", "host"})
HEALTHY = (SlaState.OK, SlaState.WARNING)


class Monitor:
    def __init__(
        self, config: Config, source: Source, http_listen: str, clock: Clock = SYSTEM
    ) -> None:
        self.clock = clock
        self.poller = Poller(config, source, clock)
        routes = {"/check": self._http_check, "/metrics": self._metrics}
        self.http = HttpServer(http_listen, routes, clock)

    @property
    def config(self) -> Config:
        return self.poller.config

    def report(self, job: str = "", host: str = "") -> SlaReport:
        return build_report(self.poller.snapshot(), self.clock.now(), job, host)

    def check(self, job: str = "", host: str = "") -> CheckResult:
        return check(self.report(job, host))

    async def start(self) -> int:
        """Serve HTTP and start polling; returns the HTTP port."""
        port = await self.http.start()
        self.poller.start()
        return port

    async def stop(self) -> None:
        await self.http.stop()
        await self.poller.stop()

    def reconfigure(self, config: Config) -> None:
        if config.monitor_http != self.config.monitor_http:
            log.warning("monitor.http changes need a restart; still serving %s", self.http.listen)
        self.poller.reconfigure(config)
        log.info(
            "monitor config: %d jobs on %d hosts, poll-interval %ss",
            len(config.jobs),
            len(config.hosts),
            config.monitor_poll_interval.total_seconds(),
        )

    def _http_check(self, query: Mapping[str, str]) -> Response:
        for name in query:
            if name not in CHECK_FILTERS:
                raise InvalidArgument(name, "unknown parameter (known: job, host)")
        try:
            result = self.check(query.get("job", ""), query.get("host", ""))
        except NotFound as error:
            return Response(404, f"{PLUGIN} UNKNOWN - {error}\n")
        return Response(200 if result.state in HEALTHY else 503, result.line() + "\n")

    def _metrics(self, query: Mapping[str, str]) -> Response:
        if query:
            raise InvalidArgument(next(iter(query)), "/metrics takes no parameters")
        return Response(200, metrics.exposition(self.report()), metrics.CONTENT_TYPE)
