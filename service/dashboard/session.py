"""Dashboard sign-in: a signed, HttpOnly, SameSite=Lax cookie that names the API key's *id*
(never its secret), a per-session CSRF token, and the key lookup on every request.

The cookie is ``base64url(json) "." base64url(hmac_sha256)``; its payload is the key id, a
random session nonce and the time it was issued. Each request checks the signature, the age,
that the session is still held server-side (a ``dashboard_sessions`` row keyed by the nonce's
sha256) and that the key is still live: signing out deletes the row, so a copied cookie stops
working at once, and revoking a key ends all its sessions. The CSRF token of a session is an
HMAC of its nonce; forms carry it in a hidden field.

The signing secret is ``settings.session_secret`` when the deployment sets one (every API
replica must share it), otherwise a random secret kept in ``DATA_DIR/dashboard-session.key``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from lrprobe.service.keys import Principal
from lrprobe.service.models import ApiKey, utcnow
from lrprobe.service.models import DashboardSession as SessionRow
from lrprobe.service.settings import Settings

SESSION_COOKIE = "lrprobe_session"
PRESESSION_COOKIE = "lrprobe_signin"
SESSION_SECONDS = 12 * 3600
_SECRET_FILE = "dashboard-session.key"


@dataclass(frozen=True)
class DashboardSession:
    principal: Principal
    key_name: str
    key_prefix: str
    nonce: str


def load_secret(settings: Settings) -> bytes:
    if settings.session_secret is not None:
        return hashlib.sha256(settings.session_secret.get_secret_value().encode()).digest()
    path = Path(settings.data_dir).resolve() / _SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, purpose: str, message: str) -> str:
    return _b64(hmac.new(secret, f"{purpose}|{message}".encode(), hashlib.sha256).digest())


def issue_cookie(
    secret: bytes, key_id: str, now: float | None = None, nonce: str | None = None
) -> str:
    payload = _b64(
        json.dumps(
            {"k": key_id, "n": nonce or secrets.token_urlsafe(16), "t": int(now or time.time())}
        ).encode()
    )
    return f"{payload}.{_mac(secret, 'session', payload)}"


def _session_id(nonce: str) -> str:
    return hashlib.sha256(nonce.encode()).hexdigest()


def start_session(sessions: sessionmaker[Session], secret: bytes, key_id: str) -> str:
    """Record a new session of ``key_id`` (and drop expired ones); returns its cookie."""
    nonce = secrets.token_urlsafe(16)
    now = utcnow()
    with sessions.begin() as session:
        session.execute(delete(SessionRow).where(SessionRow.expires_at < now))
        session.add(
            SessionRow(
                id=_session_id(nonce),
                key_id=key_id,
                created_at=now,
                expires_at=now + timedelta(seconds=SESSION_SECONDS),
            )
        )
    return issue_cookie(secret, key_id, nonce=nonce)


def end_session(sessions: sessionmaker[Session], nonce: str) -> None:
    """Forget the session: its cookie, wherever it was copied, no longer signs anyone in."""
    with sessions.begin() as session:
        session.execute(delete(SessionRow).where(SessionRow.id == _session_id(nonce)))


def read_cookie(
    secret: bytes, cookie: str | None, now: float | None = None
) -> tuple[str, str] | None:
    """(key id, nonce) of a valid, unexpired cookie, or None."""
    if not cookie or "." not in cookie:
        return None
    payload, signature = cookie.rsplit(".", 1)
    if not hmac.compare_digest(signature, _mac(secret, "session", payload)):
        return None
    try:
        data = json.loads(_unb64(payload))
        key_id, nonce, issued = str(data["k"]), str(data["n"]), int(data["t"])
    except (ValueError, KeyError, TypeError):
        return None
    if not 0 <= (now or time.time()) - issued <= SESSION_SECONDS:
        return None
    return key_id, nonce


def csrf_token(secret: bytes, nonce: str) -> str:
    return _mac(secret, "csrf", nonce)


def csrf_ok(secret: bytes, nonce: str, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(str(token), csrf_token(secret, nonce))


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


def live_key(sessions: sessionmaker[Session], key_id: str, nonce: str) -> DashboardSession | None:
    """The session, if it is still held, of a key that still exists and is not revoked."""
    with sessions() as session:
        key = session.scalar(
            select(ApiKey)
            .join(SessionRow, SessionRow.key_id == ApiKey.id)
            .where(
                ApiKey.id == key_id,
                ApiKey.revoked_at.is_(None),
                SessionRow.id == _session_id(nonce),
                SessionRow.expires_at > utcnow(),
            )
        )
        if key is None:
            return None
        return DashboardSession(
            principal=Principal(id=key.id, admin=key.admin),
            key_name=key.name,
            key_prefix=key.prefix,
            nonce=nonce,
        )
