"""Prometheus metrics: requests and latency by route template, jobs by status (read from the
database at scrape time). One registry per app, so several apps can live in one process."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lrprobe.service.lifecycle import JobStatus
from lrprobe.service.models import Job


class JobsCollector(Collector):
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with self.sessions() as session:
                counts = dict(
                    session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
                )
        except Exception:  # a scrape during a database outage shows no job gauge
            return
        gauge = GaugeMetricFamily("lrprobe_jobs", "Jobs by status.", labels=["status"])
        for status in JobStatus:
            gauge.add_metric([status.value], float(counts.get(status.value, 0)))
        yield gauge


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lrprobe_http_requests",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lrprobe_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            ["method", "route"],
            registry=self.registry,
        )
        self._jobs: JobsCollector | None = None

    def watch_jobs(self, sessions: sessionmaker[Session]) -> None:
        self.unwatch_jobs()
        self._jobs = JobsCollector(sessions)
        self.registry.register(self._jobs)

    def unwatch_jobs(self) -> None:
        if self._jobs is not None:
            self.registry.unregister(self._jobs)
            self._jobs = None


class MetricsMiddleware:
    """Counts requests by the matched route's template (``/v1/jobs/{job_id}``), never by raw
    path, so label cardinality stays bounded; unmatched paths count as ``unmatched``."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)
