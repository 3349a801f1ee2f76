"""A training run's jobs: the ``run`` label on a job, the ``run`` filter of GET /v1/jobs, and
optimizer specs with parameter groups accepted or refused as problems."""

from __future__ import annotations

from tests.service.api_support import RunningApi


def test_the_jobs_of_a_run_are_listed_by_its_label(api: RunningApi) -> None:
    model_id = api.model_id(api.key_a)
    first = api.job_id(api.key_a, model_id, run="digits-1", run_step=0)
    second = api.job_id(api.key_a, model_id, run="digits-1", run_step=500)
    api.job_id(api.key_a, model_id, run="other")
    api.job_id(api.key_a, model_id)
    api.job_id(api.key_b, api.model_id(api.key_b), run="digits-1")  # another key's run

    page = api.client.get("/v1/jobs", params={"run": "digits-1"}, headers=api.auth(api.key_a))
    assert page.status_code == 200, page.text
    items = page.json()["items"]
    assert [(j["id"], j["run"], j["run_step"]) for j in items] == [
        (second, "digits-1", 500), (first, "digits-1", 0)
    ]  # fmt: skip


def test_a_bad_run_label_is_a_validation_problem(api: RunningApi) -> None:
    response = api.submit(api.key_a, api.model_id(api.key_a), run="two words")
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


def test_optimizer_groups_are_accepted_and_bad_options_are_problems(api: RunningApi) -> None:
    model_id = api.model_id(api.key_a)
    optimizer = {"name": "adamw", "weight_decay": 0.1,
                 "param_groups": [{"params": ["layers.0.bias"], "weight_decay": 0.0}]}  # fmt: skip
    accepted = api.submit(api.key_a, model_id, optimizer=optimizer)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["spec"]["optimizer"]["param_groups"][0]["weight_decay"] == 0.0
    refused = api.submit(api.key_a, model_id, optimizer={"name": "adam", "options": {"alpha": 1}})
    assert refused.status_code == 422
    body = refused.json()
    assert body["code"] == "validation_error" and "takes no option alpha" in body["detail"]
