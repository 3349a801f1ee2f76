"""The reaper: give the jobs of dead workers back to the queue, re-send what the broker lost.

Both modes run it as its own small process, ``python -m lrprobe.worker.reaper`` (the ``reaper``
service of docker-compose; a child of ``lrprobe serve`` in embedded mode), so that reaping never
waits for a worker to finish a probe, and keeps going when every worker is dead (a Celery beat
task would queue behind running probes). Running several reapers at once is safe:
``lifecycle.reap`` is conditional and a duplicate message is a no-op claim. It re-sends to
``settings.queue``, the queue the API sends to.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from lrprobe.service import lifecycle
from lrprobe.service.broker import job_time_limit, send_job
from lrprobe.service.models import Job
from lrprobe.service.settings import Settings
from lrprobe.worker import lifeline
from lrprobe.worker.composition import WorkerRoot

log = logging.getLogger(__name__)

# Between passes, in production (the docker-compose service passes the same).
REAP_INTERVAL_SECONDS = 30.0


def reap_once(settings: Settings, sessions: sessionmaker[Session], celery_app: Celery) -> list[str]:
    """One pass; returns the ids it re-sent."""
    ids = lifecycle.reap(
        sessions,
        max_attempts=settings.max_attempts,
        requeue_after=settings.requeue_after_seconds,
    )
    if not ids:
        return ids
    with sessions() as session:
        rows = session.execute(select(Job.id, Job.spec).where(Job.id.in_(ids))).all()
        specs = {job_id: spec for job_id, spec in rows}
    for job_id in ids:
        send_job(celery_app, job_id, time_limit_s=job_time_limit(specs.get(job_id), settings))
    log.info("reaper re-sent %d job(s): %s", len(ids), ", ".join(ids))
    return ids


def run_forever(
    root: WorkerRoot, *, interval: float = REAP_INTERVAL_SECONDS, heartbeat: Path | None = None
) -> None:
    """Reap every ``interval`` seconds until SIGTERM/SIGINT (the reaper process of both modes).

    ``heartbeat``: a file touched after each successful pass (what a healthcheck looks at).
    """
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("reaper: every %.0f s on %s", interval, root.settings.resolved_database_url)
    while True:
        try:
            reap_once(root.settings, root.sessions, root.celery_app)
            if heartbeat is not None:
                heartbeat.touch()
        except Exception:
            log.exception("reaper pass failed; trying again in %.0f s", interval)
        if stop.wait(interval):
            return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lrprobe.worker.reaper", description=__doc__)
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    parser.add_argument("--interval", type=float, default=REAP_INTERVAL_SECONDS)
    parser.add_argument("--heartbeat", type=Path, help="file to touch after each pass")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    lifeline.attach()  # under lrprobe serve: one reaper per data dir, gone when serve is
    root = WorkerRoot(Settings())
    if args.once:
        reap_once(root.settings, root.sessions, root.celery_app)
        return
    run_forever(root, interval=args.interval, heartbeat=args.heartbeat)


if __name__ == "__main__":
    main()
