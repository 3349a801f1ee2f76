"""Every problem code becomes its family's exception, carrying the problem body."""

from __future__ import annotations

import httpx
import pytest

from lrprobe.client import (
    ERROR_CLASSES,
    Conflict,
    LrprobeError,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    ValidationFailed,
)
from lrprobe.client.schemas import PROBLEM_CODES
from tests.client.fakes import FakeApi, problem

FAMILY_STATUS = {
    ValidationFailed: 422, Unauthorized: 401, NotFound: 404, Conflict: 409, RateLimited: 429,
    ServerError: 500,
}  # fmt: skip


@pytest.mark.parametrize("code", PROBLEM_CODES)
def test_each_problem_code_raises_its_family(code: str) -> None:
    family = ERROR_CLASSES[code]
    assert family is not LrprobeError
    api = FakeApi()
    status = FAMILY_STATUS[family]
    api.on("GET", "/v1/jobs/j1", problem(status, code, "Do this instead."))
    with pytest.raises(family) as caught:
        api.client(retries=0).get_job("j1")
    error = caught.value
    assert (error.code, error.status) == (code, status)
    assert error.problem is not None and error.problem.detail == "Do this instead."
    assert str(error) == f"Do this instead. [{status} {code}]"


def test_rate_limited_carries_retry_after() -> None:
    api = FakeApi()
    api.on("GET", "/v1/jobs/j1", problem(429, "rate_limited", **{"Retry-After": "7"}))
    with pytest.raises(RateLimited) as caught:
        api.client().get_job("j1")
    assert caught.value.retry_after == 7.0
    assert len(api.requests) == 1  # 429 is the caller's to handle, not retried blindly


@pytest.mark.parametrize(
    ("status", "family"),
    [(400, ValidationFailed), (403, Unauthorized), (404, NotFound), (409, Conflict),
     (429, RateLimited), (500, ServerError), (418, ValidationFailed)],
)  # fmt: skip
def test_an_unknown_code_or_a_bare_error_falls_back_on_the_status(
    status: int, family: type[LrprobeError]
) -> None:
    api = FakeApi()
    api.on("GET", "/a", problem(status, "from_a_newer_server"))
    api.on("GET", "/b", httpx.Response(status, text="<html>nginx</html>"))
    lrp = api.client(retries=0)
    for path, code in [("/a", "from_a_newer_server"), ("/b", f"http_{status}")]:
        with pytest.raises(family) as caught:
            lrp._send(_get(path))
        assert caught.value.code == code


def _get(path: str):  # type: ignore[no-untyped-def]
    from lrprobe.client._calls import Call

    return Call("GET", path, lambda r: r, idempotent=True)


def test_message_is_a_deprecated_alias_of_detail() -> None:
    error = NotFound("There is no job 'x'.", code="job_not_found", status=404)
    assert error.detail == "There is no job 'x'."
    with pytest.warns(DeprecationWarning, match="detail"):
        assert error.message == error.detail
