"""`lrprobe submit`, `jobs …`, `models upload`, `keys …` over the real app: tables and JSON,
one-line errors with their codes and the documented exit codes."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from lrprobe import client
from lrprobe.cli.app import app
from tests.client.app_support import finish
from tests.client.fakes import FakeApi, job_body
from tests.service.api_support import RunningApi, safetensors_mlp, start_api
from tests.support.databases import sqlite_copy

runner = CliRunner()


@pytest.fixture
def api(
    sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningApi]:
    url = sqlite_copy(sqlite_template, tmp_path / "lrprobe.sqlite")
    with start_api(url, tmp_path) as running:
        real = client.Client

        def to_the_app(url: str | None, api_key: str | None, **_: Any) -> client.Client:
            return real(url, api_key, http_client=running.client, backoff=0.0)

        monkeypatch.setattr(client, "Client", to_the_app)
        monkeypatch.setenv("LRPROBE_API_KEY", running.key_a)
        yield running


def lrprobe(*args: str) -> Any:
    return runner.invoke(app, list(args))


def submitted(api: RunningApi, tmp_path: Path) -> str:
    path = tmp_path / "mlp.safetensors"
    path.write_bytes(safetensors_mlp())
    result = lrprobe("submit", "--model", str(path), "--data", "builtin://digits",
                     "--optimizer", "adam", "--batches", "4", "--format", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    return str(json.loads(result.output)["id"])


def test_models_upload_prints_the_id(api: RunningApi, tmp_path: Path) -> None:
    path = tmp_path / "mlp.safetensors"
    path.write_bytes(safetensors_mlp())
    table = lrprobe("models", "upload", str(path))
    assert table.exit_code == 0 and "safetensors  mlp" in table.output
    model = json.loads(lrprobe("models", "upload", str(path), "--format", "json").output)
    shown = lrprobe("models", "show", model["id"], "--format", "json")
    assert json.loads(shown.output)["id"] == model["id"]
    (tmp_path / "d.csv").write_text("a,y\n1,0\n")
    assert "upload://" in lrprobe("datasets", "upload", str(tmp_path / "d.csv")).output


def test_submit_then_ls_show_wait_export(api: RunningApi, tmp_path: Path) -> None:
    job_id = submitted(api, tmp_path)
    listed = lrprobe("jobs", "ls", "--format", "json")
    assert [j["id"] for j in json.loads(listed.output)] == [job_id]
    piped = lrprobe("jobs", "ls", "--status", "queued").output  # not a terminal: every column
    row = next(line for line in piped.splitlines() if job_id in line)
    assert "queued" in row and "builtin://digits" in row, piped
    assert "queued" in lrprobe("jobs", "show", job_id).output

    finish(api, job_id)
    waited = lrprobe("jobs", "wait", job_id, "--json", str(tmp_path / "rec.json"))
    assert waited.exit_code == 0, waited.output
    assert "layers.0" in waited.output and "single-group lr" in waited.output
    assert json.loads((tmp_path / "rec.json").read_text())["groups"][0]["lr"] == 0.1
    shown = json.loads(lrprobe("jobs", "show", job_id, "--format", "json").output)
    assert shown["job"]["status"] == "succeeded" and shown["recommendation"]["groups"]
    exported = lrprobe("jobs", "export", job_id, "--format", "csv")
    assert exported.output.splitlines()[0] == "group,params,lr,lr_low,lr_high,eta,flags"
    assert exported.output.splitlines()[1].startswith("layers.0,40,0.1,0.05,0.2")
    lrprobe("jobs", "export", job_id, "-o", str(tmp_path / "out.json"))
    assert json.loads((tmp_path / "out.json").read_text())["method_version"] == "gn-probe/0.1"


def test_submit_sends_the_calibration_length_and_the_micro_batch(
    api: RunningApi, tmp_path: Path
) -> None:
    path = tmp_path / "mlp.safetensors"
    path.write_bytes(safetensors_mlp())
    budget_flags = ["--calibration-steps", "4", "--micro-batch", "8"]
    result = lrprobe("submit", "--model", str(path), "--data", "builtin://digits",
                     *budget_flags, "--format", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    budget = json.loads(result.output)["spec"]["budget"]
    assert (budget["calibration_steps"], budget["micro_batch"]) == (4, 8)


def test_cancel_and_a_failed_wait(api: RunningApi, tmp_path: Path) -> None:
    job_id = submitted(api, tmp_path)
    assert lrprobe("jobs", "cancel", job_id).output.strip() == f"cancelled {job_id}"
    result = lrprobe("jobs", "wait", job_id)
    assert result.exit_code == 1 and "[cancelled]" in result.output
    other = submitted(api, tmp_path)
    finish(api, other, fail=True)
    failed = lrprobe("jobs", "wait", other)
    assert failed.exit_code == 1 and "[out_of_memory]" in failed.output


def test_errors_are_one_line_with_their_code_and_exit_code(api: RunningApi, tmp_path: Path) -> None:
    missing = lrprobe("jobs", "show", "nope")
    assert (missing.exit_code, missing.output.count("\n")) == (1, 1)
    assert "[job_not_found]" in missing.output and "Traceback" not in missing.output
    bad_key = lrprobe("jobs", "ls", "--api-key", "lrp_wrong")
    assert bad_key.exit_code == 3 and "[unauthorized]" in bad_key.output
    refused = lrprobe("submit", "--model-id", "x", "--data", "builtin://digits")
    assert refused.exit_code == 1 and "[model_not_found]" in refused.output
    usage = lrprobe("submit", "--data", "builtin://digits")
    assert usage.exit_code == 2 and "--model" in usage.output
    no_file = lrprobe("models", "upload", str(tmp_path / "absent.safetensors"))
    assert no_file.exit_code == 2 and "[file_not_found]" in no_file.output
    bad_format = lrprobe("jobs", "ls", "--format", "yaml")
    assert bad_format.exit_code == 2


def test_keys_over_the_api_with_an_admin_key(api: RunningApi) -> None:
    created = lrprobe("keys", "create", "ci", "--api-key", api.admin, "--format", "json")
    assert created.exit_code == 0, created.output
    key = json.loads(created.output)
    assert key["secret"].startswith("lrp_")
    listed = lrprobe("keys", "list", "--api-key", api.admin)
    assert key["id"] in listed.output
    header = listed.output.splitlines()[0].split()
    assert header == ["id", "name", "state", "prefix", "created"], listed.output
    assert f"{key['id']}  ci " in listed.output  # whole, in the test runner's 80 columns
    revoked = lrprobe("keys", "revoke", key["id"], "--api-key", api.admin)
    assert revoked.output.strip() == f"revoked {key['id']} (ci)"
    forbidden = lrprobe("keys", "create", "x", "--api-key", api.key_a)
    assert forbidden.exit_code == 3 and "[admin_required]" in forbidden.output


def test_a_wait_that_runs_out_exits_4(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeApi()
    fake.on("GET", "/v1/jobs/j1", httpx.Response(200, json=job_body(status="running")))
    running = {"items": [], "status": "running", "final": False}
    fake.on("GET", "/v1/jobs/j1/events", httpx.Response(200, json=running))
    monkeypatch.setattr(client, "Client", lambda url, key: fake.client())
    result = lrprobe("jobs", "wait", "j1", "--timeout", "0.01")
    assert result.exit_code == 4 and "[wait_timeout]" in result.output


def test_the_service_being_down_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeApi()
    fake.on("GET", "/v1/jobs", httpx.ConnectError("refused"))
    monkeypatch.setattr(client, "Client", lambda url, key: fake.client(retries=1))
    result = lrprobe("jobs", "ls")
    assert result.exit_code == 1 and "[connection_error]" in result.output


def test_the_job_list_keeps_error_codes_and_data_readable_in_an_80_column_terminal() -> None:
    from rich.console import Console

    from lrprobe.cli.remote import jobs_table
    from lrprobe.client.schemas import JobOut

    failed = job_body("f" * 32, "failed", finished_at=job_body()["created_at"],
                      error={"code": "weights_mismatch", "message": "m"})  # fmt: skip
    running = job_body("r" * 32, "running", label="nightly", progress={"done": 3, "total": 40})
    jobs = [client.Job(None, JobOut.model_validate(b)) for b in (failed, running)]  # type: ignore[arg-type]

    def shown(width: int) -> str:
        console = Console(width=width, record=True, file=io.StringIO())
        console.print(jobs_table(jobs, width=width))
        return console.export_text()

    narrow, wide = shown(80), shown(120)
    for text in (narrow, wide):
        assert "weights_mismatch" in text and "nightly" in text  # never folded first
        assert "f" * 32 in text  # ids whole, for `jobs show`
    assert "running 3/40" in narrow  # progress folded into the status
    assert "created" not in narrow and "builtin://digits" not in narrow  # in `jobs show`
    assert "created" in wide and "3/40" in wide and "builtin://digits" in wide
    assert max(len(line) for line in narrow.splitlines()) <= 80


def test_user_text_with_brackets_is_printed_as_text(
    api: RunningApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from lrprobe.cli.remote import jobs_table, print_job
    from lrprobe.client.schemas import JobOut

    created = lrprobe("keys", "create", "team[/]", "--api-key", api.admin)
    assert created.exit_code == 0, created.output
    listed = lrprobe("keys", "list", "--api-key", api.admin)
    assert listed.exit_code == 0 and "team[/]" in listed.output, listed.output

    error = {"code": "weights_mismatch", "detail": "The weights do not fit."}
    failed = JobOut.model_validate(job_body("f" * 32, "failed", label="run[bold]3", error=error))
    printed = io.StringIO()
    monkeypatch.setattr("sys.stdout", printed)
    print_job(failed)
    assert "The weights do not fit. [weights_mismatch]" in printed.getvalue()  # the code shows
    assert "run[bold]3" in printed.getvalue()

    running = JobOut.model_validate(job_body("r" * 32, "running", label="run[bold]3",
                                             spec={"model_id": "m", "data": "data/[v2].csv",
                                                   "loss": "cross_entropy"}))  # fmt: skip
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(jobs_table([client.Job(None, running)], width=120))  # type: ignore[arg-type]
    text = console.export_text()
    assert "run[bold]3" in text and "data/[v2].csv" in text
