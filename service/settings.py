"""All configuration, from the environment (prefix ``LRPROBE_``) or a ``.env`` file.

Embedded and production modes differ only in these values: the database URL (SQLite file vs
PostgreSQL), the broker URL (a SQLite-backed local transport vs Redis) and where artifacts live.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

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
    session_secret: SecretStr | None = Field(
        None,
        description="Key that signs dashboard session cookies; API replicas must share it. "
        "Default: a random key kept in data_dir/dashboard-session.key.",
    )
    torch_threads: int | None = Field(
        None, description="torch threads per worker process; default: torch's choice."
    )

    @cached_property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'lrprobe.sqlite').resolve()}"

    @cached_property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.sqlite').resolve()}"

    @cached_property
    def resolved_artifact_url(self) -> str:
        return self.artifact_url or str((self.data_dir / "artifacts").resolve())
