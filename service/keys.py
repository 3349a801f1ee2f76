"""API keys: random secrets shown once, stored as their sha256; admin keys manage keys."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from lrprobe.client.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut
from lrprobe.service.errors import KeyNotFoundError
from lrprobe.service.lifecycle import new_id
from lrprobe.service.models import ApiKey, utcnow
from lrprobe.service.notify import key_topic, touch

SECRET_PREFIX = "lrp_"
_SHOWN_PREFIX = 12


@dataclass(frozen=True)
class Principal:
    """The key a request authenticated with."""

    id: str
    admin: bool


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def authenticate(sessions: sessionmaker[Session], secret: str) -> Principal | None:
    """The live key whose secret this is, or None."""
    return authenticate_hash(sessions, hash_secret(secret))


def authenticate_hash(sessions: sessionmaker[Session], secret_hash: str) -> Principal | None:
    """The live key whose secret has this sha256, or None."""
    with sessions() as session:
        row = session.execute(
            select(ApiKey.id, ApiKey.admin).where(
                ApiKey.secret_hash == secret_hash, ApiKey.revoked_at.is_(None)
            )
        ).first()
        return None if row is None else Principal(id=row.id, admin=row.admin)


def _out(key: ApiKey) -> ApiKeyOut:
    return ApiKeyOut.model_validate(key, from_attributes=True)


def create_key(
    sessions: sessionmaker[Session], request: ApiKeyCreate, secret: str | None = None
) -> ApiKeyCreated:
    """A new key; ``secret`` only for bootstrapping with an operator-chosen secret."""
    secret = secret or new_secret()
    with sessions.begin() as session:
        key = ApiKey(
            id=new_id(),
            name=request.name,
            prefix=secret[:_SHOWN_PREFIX],
            secret_hash=hash_secret(secret),
            admin=request.admin,
            created_at=utcnow(),
        )
        session.add(key)
        session.flush()
        return ApiKeyCreated(**_out(key).model_dump(), secret=secret)


def list_keys(sessions: sessionmaker[Session]) -> list[ApiKeyOut]:
    with sessions() as session:
        keys = session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)).all()
        return [_out(k) for k in keys]


def revoke_key(sessions: sessionmaker[Session], key_id: str) -> ApiKeyOut:
    """Revoke a key (idempotent: revoking a revoked key returns it unchanged)."""
    with sessions.begin() as session:
        key = session.get(ApiKey, key_id)
        if key is None:
            raise KeyNotFoundError(f"There is no API key {key_id!r}; list keys with GET /v1/keys.")
        if key.revoked_at is None:
            key.revoked_at = utcnow()
            touch(session, key_topic(key_id))
        return _out(key)


def ensure_admin_key(sessions: sessionmaker[Session], bootstrap_secret: str | None) -> str | None:
    """Create an admin key if no live one exists; returns its secret (to print once), or None
    if an admin key already existed. ``bootstrap_secret`` becomes that key's secret if set."""
    with sessions() as session:
        exists = session.scalar(
            select(ApiKey.id).where(ApiKey.admin.is_(True), ApiKey.revoked_at.is_(None)).limit(1)
        )
    if exists is not None:
        return None
    if bootstrap_secret is not None and len(bootstrap_secret) < 16:
        raise ValueError("LRPROBE_BOOTSTRAP_ADMIN_KEY must be at least 16 characters long")
    created = create_key(sessions, ApiKeyCreate(name="admin", admin=True), bootstrap_secret)
    return created.secret
