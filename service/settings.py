"""All configuration, from the environment (prefix ``LRPROBE_``) or a ``.env`` file.

Embedded and production modes differ only in these values: the database URL (SQLite file vs
PostgreSQL), the broker URL (a SQLite-backed local transport vs Redis) and where artifacts live.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LRPROBE_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        Path("./lrprobe-data"),
        description="Directory for the embedded database, broker and artifacts.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; default: a SQLite file in data_dir. "
        "Production: postgresql+psycopg://user:pass@host/db.",
    )
    broker_url: str | None = Field(
        None,
        description="Celery broker URL; default: a SQLite-backed local transport in data_dir "
        "(no server needed). Production: redis://host:6379/0.",
    )
    queue: str = Field(
        "lrprobe",
        description="Celery queue the API sends jobs to and workers and the reaper use; give "
        "each deployment that shares a broker its own.",
    )
    redis_url: str | None = Field(
        None,
        description="Redis for the event channel (job events reach open streams without "
        "polling) and the limits shared by all API replicas (requests and open event streams "
        "per key, failed authentications per address); default: the broker URL when it is a "
        "redis:// URL, else none (the embedded mode).",
    )
    artifact_url: str | None = Field(
        None,
        description="fsspec URL or path where uploaded checkpoints and datasets are stored "
        "(content-addressed); default: data_dir/artifacts.",
    )
    data_roots: list[Path] = Field(
        default_factory=list,
        description="Directories that file:// data references may read from.",
    )
    allowed_data_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts that https://, s3:// and gs:// data references may fetch from.",
    )
    allow_private_addresses: bool = Field(
        False, description="Let remote data references resolve to private or loopback addresses."
    )
    max_upload_bytes: int = Field(
        2 * 1024**3, description="Largest accepted checkpoint or dataset upload, in bytes."
    )
    upload_idle_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="An upload or request body that sends nothing for this long is cut off "
        "(408); after this long an upload must also keep up upload_min_bytes_per_second.",
    )
    upload_min_bytes_per_second: float = Field(
        16 * 1024, ge=0, description="Slowest average rate an upload may arrive at (408 below)."
    )
    metrics_access: Literal["off", "admin", "open"] = Field(
        "admin",
        description="Who may read /metrics: off (404), admin (an admin key as Bearer token; "
        "the default) or open (anyone who can reach the API, e.g. behind a private network).",
    )
    sign_in_failures_per_minute: int = Field(
        10,
        ge=1,
        description="Failed dashboard sign-ins and unknown API keys allowed per client address "
        "and minute, across all API replicas when Redis is configured (429 with Retry-After "
        "beyond).",
    )
    max_streams_per_key: int = Field(
        20,
        ge=1,
        description="Event streams (GET /v1/jobs/{id}/events as text/event-stream) one API key "
        "may hold open at once, across all API replicas when Redis is configured (429 "
        "too_many_streams with Retry-After beyond; the SDK then polls).",
    )
    allow_pt2: bool = Field(
        False,
        description="Accept torch.export .pt2 checkpoints (loading one unpickles parts of it "
        "after a strict pre-scan; off by default).",
    )
    lease_seconds: float = Field(
        60.0, description="A running job's lease; a worker renews it every third of this."
    )
    max_attempts: int = Field(
        3, description="Attempts before a job whose workers keep dying is failed."
    )
    requeue_after_seconds: float = Field(
        120.0,
        description="A job still queued after this long is re-sent (the broker may have lost it).",
    )
    default_time_limit_seconds: float = Field(
        900.0, description="Probe time limit when the job's budget does not set one."
    )
    bootstrap_admin_key: str | None = Field(
        None,
        description="If set and no admin key exists, this secret becomes the admin key "
        "(production bootstrap). Embedded mode creates one and prints it once.",
    )
    rate_limit_per_minute: int = Field(
        600, description="Requests per minute allowed for one API key (429 beyond)."
    )
    auth_cache_seconds: float = Field(
        5.0,
        description="How long an API process trusts a key it has authenticated without asking "
        "the database again: the bound on how late a revocation takes effect in a process that "
        "missed its announcement (0: no cache).",
    )
    session_secret: SecretStr | None = Field(
        None,
        description="Key that signs dashboard session cookies; API replicas must share it. "
        "Default: a random key kept in data_dir/dashboard-session.key.",
    )
    torch_threads: int | None = Field(
        None, description="torch threads per worker process; default: torch's choice."
    )
    probe_isolation: bool = Field(
        True,
        description="Run each probe in a child process that the worker supervises: the time "
        "limit is a hard kill, and a crash, hang or out-of-memory fails only that job. Off: "
        "the probe runs in the worker process and its limit acts only between batches "
        "(debugging only).",
    )
    probe_memory_limit_bytes: int | None = Field(
        None,
        gt=0,
        description="Cap on a probe process's heap and private memory (RLIMIT_DATA, torch's "
        "own ~0.5 GB included); past it the job fails with out_of_memory. Default: no cap.",
    )
    probe_cuda_memory_fraction: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Share of the GPU's memory one probe may allocate "
        "(torch.cuda.set_per_process_memory_fraction). Default: no cap.",
    )

    @cached_property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'lrprobe.sqlite').resolve()}"

    @cached_property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.sqlite').resolve()}"

    @cached_property
    def resolved_redis_url(self) -> str | None:
        if self.redis_url is not None:
            return self.redis_url
        broker = self.resolved_broker_url
        return broker if broker.startswith(("redis://", "rediss://")) else None

    @cached_property
    def resolved_artifact_url(self) -> str:
        return self.artifact_url or str((self.data_dir / "artifacts").resolve())
