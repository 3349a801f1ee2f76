"""API key management (admin keys only)."""

from __future__ import annotations

from fastapi import APIRouter

from lrprobe.client.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut
from lrprobe.service import keys
from lrprobe.service.deps import AdminKey, SessionsDep
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
def revoke_key(key_id: str, sessions: SessionsDep, _admin: AdminKey) -> ApiKeyOut:
    """Revoke a key: it stops working at once; its jobs and models stay."""
    return keys.revoke_key(sessions, key_id)
