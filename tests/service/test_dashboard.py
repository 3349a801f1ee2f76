"""The dashboard through TestClient, on SQLite and PostgreSQL: sign-in, CSRF, pages rendered
from a recommendation, downloads, key isolation, pagination and search, the new-job form."""

from __future__ import annotations

import csv
import html
import io
import re
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from lrprobe.service import lifecycle
from lrprobe.service.dashboard.example import EXAMPLE_LABEL, ensure_example_job
from lrprobe.service.dashboard.session import SESSION_COOKIE
from lrprobe.service.models import ApiKey, Job, utcnow
from tests.service.api_support import RunningApi, probe_result, start_api
from tests.support.databases import postgres_database, sqlite_copy

pytestmark = pytest.mark.filterwarnings("error")


def _token(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def sign_in(api: RunningApi, key: str) -> str:
    """Signs the client in with ``key``; returns the session's CSRF token."""
    api.client.cookies.clear()
    page = api.client.get("/ui/sign-in")
    response = api.client.post(
        "/ui/sign-in",
        data={"api_key": key, "csrf": _token(page.text), "next": "/ui/jobs"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return _token(api.client.get("/ui/jobs").text)


def two_groups(**overrides: Any) -> dict[str, Any]:
    base = probe_result()
    second = {**base["groups"][0], "name": "layers.2", "param_names": ["layers.2.weight"],
              "numel": 24, "lr": 0.02, "lr_interval": [0.01, 0.05], "flags": ["noisy"]}  # fmt: skip
    return (
        base
        | {"groups": [base["groups"][0], second], "coupling": [[1.0, -0.4], [-0.4, 1.0]]}
        | overrides
    )


def finished_job(
    api: RunningApi, key: str, result: dict[str, Any] | None = None, **spec: Any
) -> str:
    job_id = api.job_id(key, **spec)
    assert lifecycle.claim(api.sessions, job_id, "w", 60) is not None
    assert lifecycle.succeed(api.sessions, job_id, "w", result or two_groups(), "gn-probe/0.1")
    return job_id


def test_pages_need_a_signed_in_key(api: RunningApi) -> None:
    response = api.client.get("/ui/jobs?status=failed", follow_redirects=False)

    assert response.status_code == 303
    assert response.headers["location"] == "/ui/sign-in?next=%2Fui%2Fjobs%3Fstatus%3Dfailed"


def test_signing_in_sets_an_httponly_cookie_without_the_key(api: RunningApi) -> None:
    sign_in(api, api.key_a)

    cookie = api.client.cookies.get(SESSION_COOKIE)
    assert cookie and api.key_a not in cookie
    page = api.client.get("/ui/jobs")
    assert page.status_code == 200 and "No jobs yet" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_a_wrong_key_or_a_forged_cookie_does_not_sign_in(api: RunningApi) -> None:
    page = api.client.get("/ui/sign-in")
    response = api.client.post(
        "/ui/sign-in", data={"api_key": "lrp_wrong", "csrf": _token(page.text)}
    )
    assert response.status_code == 401 and "unknown or revoked" in response.text

    api.client.cookies.set(SESSION_COOKIE, "eyJrIjoiYWRtaW4ifQ.forged", path="/ui")
    assert api.client.get("/ui/jobs", follow_redirects=False).status_code == 303


def test_a_revoked_key_loses_its_session(api: RunningApi) -> None:
    sign_in(api, api.key_a)
    with api.sessions.begin() as session:
        session.execute(update(ApiKey).where(ApiKey.name == "a").values(revoked_at=utcnow()))

    assert api.client.get("/ui/jobs", follow_redirects=False).status_code == 303


def test_forms_without_the_csrf_token_are_refused(api: RunningApi) -> None:
    sign_in(api, api.key_a)
    job_id = api.job_id(api.key_a)

    cancel = api.client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": "x"})
    sign_out = api.client.post("/ui/sign-out", data={})

    assert cancel.status_code == 403 and sign_out.status_code == 403
    assert api.client.get(f"/v1/jobs/{job_id}", headers=api.auth(api.key_a)).json()["status"] == (
        "queued"
    )


def test_cancel_and_sign_out_with_the_token(api: RunningApi) -> None:
    csrf = sign_in(api, api.key_a)
    job_id = api.job_id(api.key_a)

    response = api.client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": csrf})

    assert response.status_code == 200 and "chip-cancelled" in response.text
    api.client.post("/ui/sign-out", data={"csrf": csrf})
    assert api.client.get("/ui/jobs", follow_redirects=False).status_code == 303


def test_a_job_page_draws_the_recommendation(api: RunningApi) -> None:
    sign_in(api, api.key_a)
    job_id = finished_job(api, api.key_a, label="mlp on digits")

    page = api.client.get(f"/ui/jobs/{job_id}").text

    assert page.count('<rect class="bar') == 2 and page.count('<rect class="bar flagged"') == 1
    assert re.findall(r'class="bar-label[^"]*"[^>]*>(?:⚑ )?([^<]+)<', page)[:2] == [
        "layers.0", "layers.2",
    ]  # fmt: skip
    assert "single group 0.1" in page and 'class="ref-line"' in page
    assert page.count('class="cell"') == 4 and "Spread of η" in page
    assert "predicted" in page and "16" in page  # scale checks and cost
    page = html.unescape(page)
    assert '"layers.2": (0.02, ["layers.2.weight"]),  # flagged: noisy' in page
    assert "torch.optim.SGD(param_groups, lr=0.1)" in page


def test_calibration_runs_are_shown_as_training_loss_changes_not_predictions(
    api: RunningApi,
) -> None:
    sign_in(api, api.key_a)
    calibration = [
        {"scale": 0.1, "predicted": None, "realised": -0.05},
        {"scale": 0.3, "predicted": None, "realised": -0.2},
        {"scale": 1.0, "predicted": None, "realised": None},  # diverged: stored as null
    ]
    job_id = finished_job(
        api, api.key_a,
        two_groups(method="trajectory", scale=0.3, scale_checks=calibration,
                   trajectory_losses=[2.3, 2.1, 1.9]),
    )  # fmt: skip

    page = html.unescape(api.client.get(f"/ui/jobs/{job_id}").text)

    assert "Training-loss change per candidate scale" in page
    assert "Predicted vs realised" not in page
    assert page.count('<rect class="realised') == 2 and '<rect class="predicted' not in page
    assert "-0.2 (chosen)" in page and "diverged" in page
    assert "Loss along the probe trajectory" in page and page.count('class="loss-point"') == 3


def test_held_out_checks_of_the_fixed_method_are_predicted_vs_realised(api: RunningApi) -> None:
    sign_in(api, api.key_a)
    job_id = finished_job(api, api.key_a, two_groups(method="fixed", trajectory_losses=[]))

    page = api.client.get(f"/ui/jobs/{job_id}").text

    assert "Predicted vs realised loss decrease" in page and "candidate scale" not in page
    # the legend's two swatches, and the one check's pair of bars
    assert page.count('<rect class="predicted') == page.count('<rect class="realised') == 2
    assert 'class="loss-point"' not in page


def test_a_failed_job_shows_its_code_and_advice(api: RunningApi) -> None:
    sign_in(api, api.key_a)
    job_id = api.job_id(api.key_a)
    lifecycle.claim(api.sessions, job_id, "w", 60)
    lifecycle.fail(api.sessions, job_id, "w", "time_limit_exceeded", "The probe ran too long.")

    page = api.client.get(f"/ui/jobs/{job_id}").text

    assert "time_limit_exceeded" in page and "The probe ran too long." in page
    assert "fewer batches" in page


def test_csv_and_json_downloads(api: RunningApi) -> None:
    sign_in(api, api.key_a)
    job_id = finished_job(api, api.key_a)

    response = api.client.get(f"/ui/jobs/{job_id}/recommendation.csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))

    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    assert [(r["group"], float(r["lr"]), r["flags"]) for r in rows] == [
        ("layers.0", 0.1, ""), ("layers.2", 0.02, "noisy"),
    ]  # fmt: skip
    assert rows[0]["param_names"] == "layers.0.weight;layers.0.bias"
    data = api.client.get(f"/ui/jobs/{job_id}/recommendation.json").json()
    assert [g["name"] for g in data["groups"]] == ["layers.0", "layers.2"]


def test_another_keys_job_is_not_found(api: RunningApi) -> None:
    job_id = finished_job(api, api.key_a)
    sign_in(api, api.key_b)

    for path in ("", "/recommendation.csv", "/recommendation.json"):
        response = api.client.get(f"/ui/jobs/{job_id}{path}")
        assert response.status_code == 404 and "job_not_found" in response.text
    assert job_id not in api.client.get("/ui/jobs").text
    assert api.client.get(f"/ui/jobs/progress?ids={job_id}").json() == {}


def test_pages_of_jobs_follow_a_cursor_and_filter(api: RunningApi) -> None:
    sign_in(api, api.key_a)
    model_id = api.model_id(api.key_a)
    ids = [api.job_id(api.key_a, model_id, label=f"run {i:03d}") for i in range(60)]
    start = utcnow() - timedelta(hours=1)
    with api.sessions.begin() as session:
        for i, job_id in enumerate(ids):
            session.execute(
                update(Job).where(Job.id == job_id).values(created_at=start + timedelta(seconds=i))
            )

    first = api.client.get("/ui/jobs").text
    older = re.search(r'href="([^"]+)" rel="next"', first)
    assert older is not None
    second = api.client.get(older.group(1).replace("&amp;", "&")).text

    assert first.count('class="job-link"') == 50 and second.count('class="job-link"') == 10
    assert "run 059" in first and "run 009" in second and "run 009" not in first
    assert 'rel="next"' not in second
    found = api.client.get("/ui/jobs?q=RUN 04").text
    assert found.count('class="job-link"') == 10
    assert api.client.get("/ui/jobs?status=succeeded").text.count('class="job-link"') == 0


def test_the_form_submits_a_job_and_shows_problems(api: RunningApi) -> None:
    csrf = sign_in(api, api.key_a)
    model_id = api.model_id(api.key_a)
    form = {"csrf": csrf, "model_id": model_id, "data": "builtin://digits", "loss": "cross_entropy",
            "optimizer.name": "adam", "budget.batches": "8", "label": "from the form"}  # fmt: skip

    bad = api.client.post("/ui/jobs", data=form | {"budget.batches": "999"})
    unknown = api.client.post("/ui/jobs", data=form | {"data": "builtin://nope"})
    created = api.client.post("/ui/jobs", data=form, follow_redirects=False)

    assert bad.status_code == 422 and "less than or equal to 256" in bad.text
    assert unknown.status_code == 422 and "unknown_builtin_dataset" in unknown.text
    assert created.status_code == 303
    job = api.client.get(
        created.headers["location"].replace("/ui", "/v1"), headers=api.auth(api.key_a)
    )
    assert job.json()["spec"]["optimizer"]["name"] == "adam" and len(api.queue.sent) == 1


def test_the_form_offers_every_optimizer_and_partition_the_api_takes(api: RunningApi) -> None:
    from typing import get_args

    from lrprobe.client.schemas import OptimizerName

    csrf = sign_in(api, api.key_a)
    page = api.client.get("/ui/jobs/new").text
    offered = set(re.findall(r'<option value="([a-z]+)"', page))
    assert set(get_args(OptimizerName)) <= offered
    assert {"layer", "block", "kind", "tensor", "single", "regex"} <= offered
    chosen = {"optimizer.name": "rmsprop", "optimizer.momentum": "0.5",
              "optimizer.betas": "0.8, 0.9", "partition.rule": "block"}  # fmt: skip
    form = _form(api, csrf) | chosen
    created = api.client.post("/ui/jobs", data=form, follow_redirects=False)
    assert created.status_code == 303, created.text
    spec = api.client.get(
        created.headers["location"].replace("/ui", "/v1"), headers=api.auth(api.key_a)
    ).json()["spec"]
    assert spec["optimizer"]["momentum"] == 0.5  # RMSprop reads momentum, not betas
    assert spec["optimizer"]["betas"] == [0.9, 0.999] and spec["partition"]["rule"] == "block"


def _form(api: RunningApi, csrf: str) -> dict[str, str]:
    return {
        "csrf": csrf, "model_id": api.model_id(api.key_a), "data": "builtin://digits",
        "loss": "cross_entropy", "optimizer.name": "sgd", "budget.batches": "8",
    }  # fmt: skip


def _stored_budget(api: RunningApi, created: Any) -> dict[str, Any]:
    assert created.status_code == 303, created.text
    job = api.client.get(
        created.headers["location"].replace("/ui", "/v1"), headers=api.auth(api.key_a)
    )
    return dict(job.json()["spec"]["budget"])


def test_the_form_offers_calibration_steps_and_micro_batch(api: RunningApi) -> None:
    sign_in(api, api.key_a)
    page = api.client.get("/ui/jobs/new").text

    calibration = re.search(r'<input id="budget-calibration"[^>]*>', page)
    micro = re.search(r'<input id="budget-micro-batch"[^>]*>', page)

    assert calibration and micro
    assert 'name="budget.calibration_steps"' in calibration[0]
    assert 'min="1" max="256" value="40"' in calibration[0]
    assert 'name="budget.micro_batch"' in micro[0]
    assert 'min="1" max="8192" value=""' in micro[0] and 'placeholder="whole batch"' in micro[0]
    assert '<label for="budget-calibration">Calibration steps' in page
    assert '<label for="budget-micro-batch">Micro-batch' in page
    assert 'aria-describedby="budget-micro-batch-hint"' in micro[0]


def test_the_form_stores_calibration_steps_and_micro_batch(api: RunningApi) -> None:
    csrf = sign_in(api, api.key_a)
    form = _form(api, csrf) | {"budget.calibration_steps": "12", "budget.micro_batch": "16"}

    created = api.client.post("/ui/jobs", data=form, follow_redirects=False)

    budget = _stored_budget(api, created)
    assert budget["calibration_steps"] == 12 and budget["micro_batch"] == 16
    page = html.unescape(api.client.get(created.headers["location"]).text)
    assert "micro-batches of 16 · 12 calibration steps" in page


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_the_job_page_says_when_momentum_doubles_the_calibration_runs(
    api: RunningApi, optimizer: str
) -> None:
    csrf = sign_in(api, api.key_a)
    form = _form(api, csrf) | {"optimizer.name": optimizer, "budget.calibration_steps": "12"}

    created = api.client.post("/ui/jobs", data=form, follow_redirects=False)

    assert created.status_code == 303, created.text
    page = html.unescape(re.sub(r"<[^>]+>", "", api.client.get(created.headers["location"]).text))
    assert "12 calibration steps" in page
    assert ("12 calibration steps (× 2 with momentum)" in page) == (optimizer == "momentum")


def test_an_empty_micro_batch_is_the_whole_batch(api: RunningApi) -> None:
    csrf = sign_in(api, api.key_a)
    form = _form(api, csrf) | {"budget.calibration_steps": "40", "budget.micro_batch": "  "}

    created = api.client.post("/ui/jobs", data=form, follow_redirects=False)

    budget = _stored_budget(api, created)
    assert budget["micro_batch"] is None and budget["calibration_steps"] == 40
    page = html.unescape(api.client.get(created.headers["location"]).text)
    assert "whole batches · 40 calibration steps" in page


def test_a_job_stored_before_the_two_fields_shows_their_defaults(api: RunningApi) -> None:
    sign_in(api, api.key_a)
    job_id = api.job_id(api.key_a, budget={"batches": 8, "batch_size": 32})
    with api.sessions.begin() as session:
        spec = dict(session.get_one(Job, job_id).spec)
        spec["budget"] = {"batches": 8, "batch_size": 32, "heldout_batches": 4}
        session.execute(update(Job).where(Job.id == job_id).values(spec=spec))
    with api.sessions() as session:
        assert "calibration_steps" not in session.get_one(Job, job_id).spec["budget"]

    page = html.unescape(re.sub(r"<[^>]+>", "", api.client.get(f"/ui/jobs/{job_id}").text))

    assert "8 batches × 32 · whole batches · 40 calibration steps" in page


def test_bad_calibration_steps_or_micro_batch_come_back_as_field_errors(api: RunningApi) -> None:
    form = _form(api, sign_in(api, api.key_a))
    cases = [
        ("calibration_steps", "0", "greater than or equal to 1"),
        ("calibration_steps", "257", "less than or equal to 256"),
        ("calibration_steps", "2.5", "valid integer"),
        ("calibration_steps", "forty", "valid integer"),
        ("micro_batch", "0", "greater than or equal to 1"),
        ("micro_batch", "8193", "less than or equal to 8192"),
        ("micro_batch", "1.5", "valid integer"),
        ("micro_batch", "1e999", "valid integer"),
        ("micro_batch", "9" * 5000, "valid integer"),
    ]
    for name, value, message in cases:
        response = api.client.post("/ui/jobs", data=form | {f"budget.{name}": value})

        assert response.status_code == 422, (name, value, response.status_code)
        error = re.search(
            rf'<p class="field-error" id="budget-{name}-error">([^<]*)</p>', response.text
        )
        assert error and message in error[1], (name, value, error)
        field = re.search(rf'<input [^>]*name="budget.{name}"[^>]*>', response.text)
        assert field and 'aria-invalid="true"' in field[0] and f'value="{value}"' in field[0]
    assert api.queue.sent == []


def test_uploading_a_checkpoint_selects_it(api: RunningApi) -> None:
    from tests.service.api_support import safetensors_mlp

    csrf = sign_in(api, api.key_a)

    response = api.client.post(
        "/ui/models", data={"csrf": csrf}, files={"file": ("m.safetensors", safetensors_mlp())}
    )

    assert response.status_code == 200 and "Checkpoint uploaded" in response.text
    assert re.search(r'<option value="\w+" selected>mlp · m.safetensors', response.text)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_api(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[RunningApi]:
    """The app on a migrated database of its own (the module's PostgreSQL database is shared by
    its tests, so it is not empty)."""
    with ExitStack() as stack:
        if request.param == "sqlite":
            url = sqlite_copy(sqlite_template, tmp_path / "empty.sqlite")
        else:
            template = request.getfixturevalue("postgres_template")
            url = stack.enter_context(postgres_database(template=template))
        yield stack.enter_context(start_api(url, tmp_path))


def test_the_example_job_is_submitted_once_on_an_empty_database(empty_api: RunningApi) -> None:
    api = empty_api
    job_id = ensure_example_job(api.settings, api.queue)

    # sent with its time limit, the server's default (the example's spec sets none)
    limit = api.settings.default_time_limit_seconds
    assert job_id is not None and api.queue.sent == [(job_id, limit)]
    assert ensure_example_job(api.settings, api.queue) is None
    job = api.client.get(f"/v1/jobs/{job_id}", headers=api.auth(api.admin))
    assert job.status_code == 200 and job.json()["label"] == EXAMPLE_LABEL


def test_no_example_job_once_there_are_jobs(api: RunningApi) -> None:
    api.job_id(api.key_a)

    assert ensure_example_job(api.settings, api.queue) is None


def test_a_parameter_group_s_own_momentum_doubles_the_calibration_runs_too(
    api: RunningApi,
) -> None:
    sign_in(api, api.key_a)
    # β = 0 for the optimizer, 0.9 for one group: the probe runs the longer contest.
    optimizer = {"name": "momentum", "momentum": 0.0,
                 "param_groups": [{"params": ["layers.0.weight"], "momentum": 0.9}]}  # fmt: skip
    job_id = api.job_id(api.key_a, optimizer=optimizer)

    page = html.unescape(re.sub(r"<[^>]+>", "", api.client.get(f"/ui/jobs/{job_id}").text))

    assert "40 calibration steps (× 2 with momentum)" in page
