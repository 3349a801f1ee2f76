"""The notification channel: "job X has new events" and "key Y was revoked", published after
the commit that made them true.

The database stays the source of truth; a notification only tells listeners to look again, so a
lost or duplicated one costs a late or an extra query, never a wrong answer. In production the
channel is Redis pub/sub (``LRPROBE_REDIS_URL``, or the broker's Redis); the embedded mode has
no Redis, and its event streams find new events with one shared query per API process instead
(:mod:`lrprobe.service.events`).

Publishing is wired into sessions: :func:`touch` marks a topic on the session, and the session's
``after_commit`` hook publishes the marked topics through the sessionmaker's notifier
(``make_sessionmaker(engine, notifier=...)``). Use cases stay free of it.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

JOB_PREFIX = "job:"
KEY_PREFIX = "key:"
_TOPICS = "lrprobe.notify.topics"
NOTIFIER = "lrprobe.notify.notifier"


class Notifier(Protocol):
    def publish(self, topics: list[str]) -> None: ...

    def close(self) -> None: ...


class RedisNotifier:
    """Publishes on the Redis channel :func:`channel_name` (one message per commit)."""

    def __init__(self, url: str) -> None:
        import redis

        # Short timeouts: a commit's notification must never hold up its caller for long (a
        # listener that misses it catches up through its fallback sweep).
        self.client: Any = redis.Redis.from_url(
            url, socket_connect_timeout=1.0, socket_timeout=1.0, health_check_interval=30
        )
        self.channel = channel_name(url)

    def publish(self, topics: list[str]) -> None:
        try:
            self.client.publish(self.channel, " ".join(topics))
        except Exception as error:
            log.warning("could not publish %d notification(s): %s", len(topics), error)

    def close(self) -> None:
        self.client.close()


def channel_name(url: str) -> str:
    """One channel per Redis database: pub/sub ignores database numbers, and deployments (or
    test runs) on separate databases of one server must not wake each other's streams."""
    from redis.connection import parse_url

    return f"lrprobe:{parse_url(url).get('db', 0)}:notify"


def notifier_for(redis_url: str | None) -> Notifier | None:
    return None if redis_url is None else RedisNotifier(redis_url)


def touch(session: Session, topic: str) -> None:
    """Publish ``topic`` once ``session``'s transaction commits (nothing if it rolls back)."""
    session.info.setdefault(_TOPICS, set()).add(topic)


def job_topic(job_id: str) -> str:
    return JOB_PREFIX + job_id


def key_topic(key_id: str) -> str:
    return KEY_PREFIX + key_id


@event.listens_for(Session, "after_commit")
def _publish_after_commit(session: Session) -> None:
    topics = session.info.pop(_TOPICS, None)
    notifier: Notifier | None = session.info.get(NOTIFIER)
    if topics and notifier is not None:
        notifier.publish(sorted(topics))


@event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop(_TOPICS, None)
