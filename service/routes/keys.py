"""API key management (admin keys only)."""

from __future__ import annotations

from fastapi import APIRouter

from lrprobe.client.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut
from lrprobe.service import keys
from lrprobe.service.deps import AdminKey, ServicesDep, SessionsDep
from lrprobe.service.routes import problems

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.post("", status_code=201, response_model=ApiKeyCreated, responses=problems(401, 403, 422))
def create_key(body: ApiKeyCreate, sessions: SessionsDep, _admin: AdminKey) -> ApiKeyCreated:
    """Create a key; its secret is in this response only."""
    return keys.create_key(sessions, body)


@router.get("", response_model=list[ApiKeyOut], responses=problems(401, 403))
def list_keys(sessions: SessionsDep, _admin: AdminKey) -> list[ApiKeyOut]:
    """All keys, oldest first (secrets are never shown again)."""
    return keys.list_keys(sessions)


@router.delete("/{key_id}", response_model=ApiKeyOut, responses=problems(401, 403, 404))
def revoke_key(key_id: str, services: ServicesDep, _admin: AdminKey) -> ApiKeyOut:
    """Revoke a key: it stops working at once on this API process, and on every other within
    ``LRPROBE_AUTH_CACHE_SECONDS`` (at once too where Redis carries the announcement); its jobs
    and models stay."""
    revoked = keys.revoke_key(services.sessions, key_id)
    services.principals.drop_key(revoked.id)
    return revoked
