"""The read path serialises rows straight to JSON (no JobOut per row): what it sends must be
exactly what the validated model gives, for a job in every state and for specs stored before a
field of JobCreate existed."""

from __future__ import annotations

from sqlalchemy import update

from lrprobe.service import jobs, lifecycle
from lrprobe.service.models import Job
from tests.service.api_support import RunningApi, probe_result


def _validated(api: RunningApi, job_id: str) -> dict[str, object]:
    """The JobOut the ORM row gives, validated by pydantic, as JSON."""
    with api.sessions() as session:
        return jobs.job_out(session.get_one(Job, job_id)).model_dump(mode="json")


def test_job_reads_send_exactly_the_validated_job_out_in_every_state(api: RunningApi) -> None:
    a = api.auth(api.key_a)
    model = api.model_id(api.key_a)
    queued = api.job_id(api.key_a, model, label="first")
    running = api.job_id(api.key_a, model, optimizer={"name": "adamw", "weight_decay": 0.01})
    lifecycle.claim(api.sessions, running, "w1", lease=60)
    lifecycle.heartbeat(api.sessions, running, "w1", 60, lifecycle.Progress(3, 8, "trajectory"))
    done = api.job_id(api.key_a, model)
    lifecycle.claim(api.sessions, done, "w1", lease=60)
    lifecycle.succeed(api.sessions, done, "w1", probe_result(), "gn-probe/0.2")
    failed = api.job_id(api.key_a, model, budget={"batches": 4, "batch_size": 16})
    lifecycle.claim(api.sessions, failed, "w1", lease=60)
    lifecycle.fail(api.sessions, failed, "w1", "non_finite_loss", "the loss is NaN")
    cancelled = api.job_id(api.key_a, model)
    api.client.post(f"/v1/jobs/{cancelled}/cancel", headers=a)
    ids = [queued, running, done, failed, cancelled]

    for job_id in ids:
        assert api.client.get(f"/v1/jobs/{job_id}", headers=a).json() == _validated(api, job_id)
    page = api.client.get("/v1/jobs", headers=a).json()
    assert page["items"] == [_validated(api, j) for j in reversed(ids)]
    assert page["next_cursor"] is None
    # pages of 2 join up to the same list
    first = api.client.get("/v1/jobs", headers=a, params={"limit": 2}).json()
    second = api.client.get(
        "/v1/jobs", headers=a, params={"limit": 2, "cursor": first["next_cursor"]}
    ).json()
    assert [j["id"] for j in first["items"] + second["items"]] == list(reversed(ids))[:4]


def test_a_spec_stored_before_a_field_existed_reads_with_its_default(api: RunningApi) -> None:
    job_id = api.job_id(api.key_a)
    with api.sessions.begin() as session:
        spec = dict(session.get_one(Job, job_id).spec)
        del spec["seed"], spec["device"]
        session.execute(update(Job).where(Job.id == job_id).values(spec=spec))
    sent = api.client.get(f"/v1/jobs/{job_id}", headers=api.auth(api.key_a)).json()
    assert sent == _validated(api, job_id)
    assert (sent["spec"]["seed"], sent["spec"]["device"]) == (0, "auto")
