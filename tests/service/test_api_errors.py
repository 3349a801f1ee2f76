"""Every error is problem+json with a stable code; health, readiness, metrics and key admin."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lrprobe.client.schemas import ERROR_CODES, Problem
from lrprobe.service import migrate
from lrprobe.service.app import create_app
from lrprobe.service.db import make_engine, make_sessionmaker
from tests.service.api_support import RunningApi, start_api
from tests.support.settings import make_settings


def _problem(response: object, status: int, code: str) -> Problem:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    assert response.headers["content-type"] == "application/problem+json"  # type: ignore[attr-defined]
    problem = Problem.model_validate(response.json())  # type: ignore[attr-defined]
    assert (problem.status, problem.code) == (status, code)
    assert problem.code in ERROR_CODES and problem.detail and problem.title
    return problem


def test_missing_unknown_and_revoked_keys_are_401(api: RunningApi) -> None:
    _problem(api.client.get("/v1/jobs"), 401, "unauthorized")
    response = api.client.get("/v1/jobs", headers=api.auth("lrp_nope"))
    _problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    key = api.client.post("/v1/keys", headers=api.auth(api.admin), json={"name": "temp"}).json()
    assert key["secret"].startswith("lrp_")
    assert api.client.get("/v1/jobs", headers=api.auth(key["secret"])).status_code == 200
    revoked = api.client.delete(f"/v1/keys/{key['id']}", headers=api.auth(api.admin))
    assert revoked.json()["revoked_at"] is not None
    _problem(api.client.get("/v1/jobs", headers=api.auth(key["secret"])), 401, "unauthorized")


def test_only_admin_keys_manage_keys(api: RunningApi) -> None:
    _problem(api.client.get("/v1/keys", headers=api.auth(api.key_a)), 403, "admin_required")
    listed = api.client.get("/v1/keys", headers=api.auth(api.admin)).json()
    assert {k["name"] for k in listed} >= {"a", "b", "root"}
    assert all("secret" not in k for k in listed)
    missing = api.client.delete("/v1/keys/nope", headers=api.auth(api.admin))
    _problem(missing, 404, "key_not_found")


def test_unknown_routes_methods_and_bad_bodies_are_problems(api: RunningApi) -> None:
    _problem(api.client.get("/v2/nothing"), 404, "not_found")
    _problem(api.client.delete("/v1/jobs", headers=api.auth(api.key_a)), 405, "method_not_allowed")
    garbage = api.client.post(
        "/v1/jobs", headers=api.auth(api.key_a) | {"Content-Type": "application/json"},
        content=b"{not json",
    )  # fmt: skip
    assert _problem(garbage, 422, "validation_error").errors


def test_a_database_outage_is_a_503_problem(api: RunningApi) -> None:
    dead = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none", connect_args={
        "connect_timeout": 2})  # fmt: skip
    services = api.client.app.state.services  # type: ignore[attr-defined]
    services.sessions = services.reads = make_sessionmaker(dead)
    response = api.client.get("/v1/jobs", headers=api.auth(api.key_a))
    _problem(response, 503, "service_unavailable")
    assert response.headers["retry-after"] == "5"
    dead.dispose()


def test_health_readiness_and_metrics(api: RunningApi) -> None:
    assert api.client.get("/healthz").json()["status"] == "ok"
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": True, "schema": True, "broker": True}
    api.queue.up = False
    down = api.client.get("/readyz")
    assert (down.status_code, down.json()["checks"]["broker"]) == (503, False)
    api.queue.up = True
    api.job_id(api.key_a)
    text = api.client.get("/metrics", headers=api.auth(api.admin)).text
    assert 'lrprobe_http_requests_total{method="POST",route="/v1/jobs",status="202"} 1.0' in text
    assert 'route="/v1/models"' in text
    assert 'lrprobe_jobs{status="queued"}' in text
    assert "/v2/" not in text  # raw paths never become labels
    assert api.client.get("/docs").status_code == 200
    assert "/v1/jobs/{job_id}/events" in api.client.get("/openapi.json").json()["paths"]


def test_rate_limit_is_a_429_with_retry_after(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate.upgrade(url)
    with start_api(url, tmp_path, rate_limit_per_minute=3) as api:
        for _ in range(3):
            assert api.client.get("/v1/jobs", headers=api.auth(api.key_a)).status_code == 200
        limited = api.client.get("/v1/jobs", headers=api.auth(api.key_a))
        _problem(limited, 429, "rate_limited")
        assert int(limited.headers["retry-after"]) >= 1
        assert api.client.get("/v1/jobs", headers=api.auth(api.key_b)).status_code == 200


def test_the_api_refuses_to_start_off_head_and_readyz_reports_drift(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    app = create_app(make_settings(tmp_path, url))
    with pytest.raises(migrate.SchemaNotAtHeadError, match="lrprobe migrate"), TestClient(app):
        pass
    migrate.upgrade(url)
    with start_api(url, tmp_path) as api:
        migrate.downgrade(url, "base")
        drift = api.client.get("/readyz")
        assert (drift.status_code, drift.json()["checks"]["schema"]) == (503, False)
