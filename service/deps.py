"""What routes receive: the app's services and the authenticated key, as ``Annotated`` aliases."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from lrprobe.service.artifacts import ArtifactStore
from lrprobe.service.auth_throttle import AuthThrottle, client_address
from lrprobe.service.errors import AdminRequiredError, RateLimitedError, UnauthorizedError
from lrprobe.service.events import EventHub
from lrprobe.service.job_reads import JobReads
from lrprobe.service.keys import Principal, authenticate_hash, hash_secret
from lrprobe.service.metrics import Metrics
from lrprobe.service.principals import PrincipalCache
from lrprobe.service.queue import JobQueue
from lrprobe.service.ratelimit import RateLimiter
from lrprobe.service.settings import Settings
from lrprobe.service.stream_limit import StreamLimit


@dataclass
class Services:
    """Everything the lifespan builds; routes reach it through the dependencies below."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    # Sessions without a transaction, for single reads: one round trip instead of three (no
    # BEGIN, no ROLLBACK); each statement sees the latest commit, as in a READ COMMITTED one.
    reads: sessionmaker[Session]
    # GET /v1/jobs/{id} and GET /v1/jobs, as coroutines (async PostgreSQL, else the thread pool)
    job_reads: JobReads
    store: ArtifactStore
    queue: JobQueue
    limiter: RateLimiter
    principals: PrincipalCache
    events: EventHub
    metrics: Metrics
    schema_heads: frozenset[str]
    upload_dir: Path
    throttle: AuthThrottle
    streams: StreamLimit


# The dependencies below are ``async`` although they never wait: FastAPI runs a plain ``def``
# dependency in the thread pool, a round trip that cost more than the work itself.
async def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(_services)]


async def _sessions(services: ServicesDep) -> sessionmaker[Session]:
    return services.sessions


async def _settings(services: ServicesDep) -> Settings:
    return services.settings


async def _reads(services: ServicesDep) -> sessionmaker[Session]:
    return services.reads


SessionsDep = Annotated[sessionmaker[Session], Depends(_sessions)]
ReadsDep = Annotated[sessionmaker[Session], Depends(_reads)]
SettingsDep = Annotated[Settings, Depends(_settings)]

_bearer = HTTPBearer(auto_error=False, description="An lrprobe API key (lrp_…).")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def throttled(services: Services, address: str) -> None:
    """Refuse an address that failed to authenticate too often (429 + Retry-After)."""
    wait = await services.throttle.wait(address)
    if wait is not None:
        raise RateLimitedError(
            f"Too many failed sign-ins or unknown API keys from this address; retry in {wait} s.",
            retry_after=wait,
        )


async def current_key(
    request: Request, services: ServicesDep, credentials: Credentials
) -> Principal:
    if credentials is None or not credentials.credentials:
        raise UnauthorizedError(
            "This endpoint needs an API key: send the header Authorization: Bearer <key>."
        )
    digest = hash_secret(credentials.credentials)
    principal = services.principals.get(digest)
    if principal is None:
        # Only lookups are throttled: a key authenticated a moment ago proves itself, and
        # checking every request would cost a round trip to Redis each.
        address = client_address(request.client)
        await throttled(services, address)
        principal = await run_in_threadpool(authenticate_hash, services.reads, digest)
        if principal is None:
            await services.throttle.failed(address)
            raise UnauthorizedError(
                "The API key is unknown or revoked; ask an admin for a new one."
            )
        services.principals.put(digest, principal)
    await check_rate(services, principal)
    return principal


async def check_rate(services: Services, principal: Principal) -> None:
    """Count one request of ``principal``'s key; 429 over the limit."""
    wait = await services.limiter.take(principal.id)
    if wait is not None:
        raise RateLimitedError(
            f"This key is over its limit of {services.settings.rate_limit_per_minute} requests "
            f"per minute; retry in {wait} s.",
            retry_after=wait,
        )


CurrentKey = Annotated[Principal, Depends(current_key)]


async def _admin_key(key: CurrentKey) -> Principal:
    if not key.admin:
        raise AdminRequiredError("Managing API keys needs an admin key.")
    return key


AdminKey = Annotated[Principal, Depends(_admin_key)]
