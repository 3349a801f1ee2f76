"""The new-job form: the page (with the user's recent models and datasets), the form's fields
read as the API's ``JobCreate`` body, and its submission through the same use case as
``POST /v1/jobs``; refusals are shown next to the fields they concern."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import RedirectResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from lrprobe.client.error_catalogue import CATALOGUE
from lrprobe.client.schemas import JobCreate
from lrprobe.rules.data_refs import BUILTIN_DATASETS
from lrprobe.service import jobs
from lrprobe.service.dashboard import queries
from lrprobe.service.dashboard.rendering import html_router, render
from lrprobe.service.dashboard.session import DashboardSession
from lrprobe.service.dashboard.signin import Current, checked_form
from lrprobe.service.deps import Services, ServicesDep
from lrprobe.service.errors import ServiceError

router = html_router()

# Codes the new-job form marks next to its data field (an upload:// reference to a missing
# dataset is the data field's fault too).
DATA_CODES = {c for c, e in CATALOGUE.items() if e.family == "data"} | {"dataset_not_found"}

# The form's budget inputs, named ``budget.<field>`` after ``BudgetSpec``'s fields.
BUDGET_FIELDS = (
    "batches",
    "batch_size",
    "micro_batch",
    "heldout_batches",
    "calibration_steps",
    "time_limit_s",
)


def new_job_page(
    request: Request, services: Services, me: DashboardSession, status: int = 200, **context: Any
) -> Response:
    context.setdefault("values", {})
    context.setdefault("errors", {})
    return render(
        request, "new_job.html", status, me=me,
        models=queries.recent_models(services.sessions, me.principal),
        datasets=queries.recent_datasets(services.sessions, me.principal),
        builtins=BUILTIN_DATASETS, idempotency_key=secrets.token_urlsafe(16), **context,
    )  # fmt: skip


@router.get("/ui/jobs/new")
def new_job_form(
    request: Request, services: ServicesDep, me: Current, model: str | None = None,
    uploaded: str | None = None,
) -> Response:  # fmt: skip
    values = {"model_id": model} if model else {}
    notice = None
    if uploaded == "model" and model:
        notice = "Checkpoint uploaded; it is selected below."
    elif uploaded and uploaded.startswith("upload://"):
        values["data"] = uploaded
        notice = f"Dataset uploaded; it is referenced as {uploaded}."
    return new_job_page(request, services, me, values=values, notice=notice)


@router.post("/ui/jobs")
async def create_job(request: Request, services: ServicesDep, me: Current) -> Response:
    fields = await checked_form(request, me)
    spec = _spec_from_form(fields)
    try:
        body = JobCreate.model_validate(spec)
    except ValidationError as exc:
        errors = _field_errors(
            [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors(include_url=False)]
        )
        return new_job_page(
            request, services, me, 422, values=fields, errors=errors,
            problem={"code": "validation_error",
                     "detail": "The job was not submitted: fix the fields marked below."},
        )  # fmt: skip
    try:
        submitted = await run_in_threadpool(
            jobs.submit_job, services.sessions, services.queue, services.settings, me.principal,
            body, fields.get("idempotency_key") or None,
        )  # fmt: skip
    except ServiceError as exc:
        errors = _field_errors(exc.errors)
        if exc.code in DATA_CODES:
            errors.setdefault("data", exc.detail)
        elif exc.code == "model_not_found":
            errors.setdefault("model_id", exc.detail)
        return new_job_page(
            request, services, me, exc.status, values=fields, errors=errors,
            problem={"code": exc.code, "detail": exc.detail},
        )  # fmt: skip
    return RedirectResponse(f"/ui/jobs/{quote(submitted.job.id)}", status_code=303)


def _spec_from_form(fields: dict[str, str]) -> dict[str, Any]:
    def given(name: str) -> str | None:
        value = fields.get(name, "").strip()
        return value or None

    optimizer: dict[str, Any] = {"name": given("optimizer.name") or "sgd"}
    if optimizer["name"] in ("momentum", "rmsprop") and given("optimizer.momentum"):
        optimizer["momentum"] = _number(given("optimizer.momentum"))
    if optimizer["name"] in ("adam", "adamw", "nadam", "radam", "lion") and given(
        "optimizer.betas"
    ):
        optimizer["betas"] = [
            _number(b.strip()) for b in (given("optimizer.betas") or "").split(",")
        ]
    if given("optimizer.weight_decay"):
        optimizer["weight_decay"] = _number(given("optimizer.weight_decay"))
    rule: Any = given("partition.rule") or "layer"
    if rule == "regex":
        rule = {}
        for line in (given("partition.regex") or "").splitlines():
            if "=>" in line:
                pattern, _, name = line.partition("=>")
                rule[pattern.strip()] = name.strip()
    # An empty input is left out and takes the schema's default (micro_batch: null, the whole
    # batch).
    budget = {
        name: _number(given(f"budget.{name}")) for name in BUDGET_FIELDS if given(f"budget.{name}")
    }
    spec: dict[str, Any] = {
        "model_id": given("model_id") or "",
        "data": given("data") or "",
        "loss": given("loss") or "cross_entropy",
        "optimizer": optimizer,
        "partition": {"rule": rule},
        "budget": budget,
        "device": given("device") or "auto",
    }
    for name in ("seed", "block_size"):
        if given(name) is not None:
            spec[name] = _number(given(name))
    if given("label") is not None:
        spec["label"] = given("label")
    return spec


def _number(text: str | None) -> Any:
    """A form's number as JSON would carry it: the request schema takes strict ints and
    floats, and a form sends text. Anything else stays text and fails validation there."""
    if text is None:
        return None
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            continue
    return text


def _field_errors(errors: list[dict[str, Any]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p != "body" and not str(p).isdigit()]
        name = ".".join(loc[:2]) or "form"
        if name == "partition.rule":
            name = "partition.regex" if "regular expression" in str(error.get("msg")) else name
        out.setdefault(name, str(error.get("msg", "invalid")).removeprefix("Value error, "))
    return out
