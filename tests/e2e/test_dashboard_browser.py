"""The dashboard in headless Chromium (Playwright driving /usr/bin/chromium) against a real
server: uvicorn on a free port, SQLite in a temp data dir, and the real job runner started in
this process for each submitted job (the broker path is covered by the worker tests).

Sign in, upload a checkpoint and submit a job from the form, watch it finish, check the chart,
download the CSV, and make sure a second key cannot open the job. Screenshots go to
``test-artifacts/``. Without Chromium or Playwright the test skips, except under CI=1.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lrprobe.client.schemas import ApiKeyCreate
from lrprobe.service import keys, migrate
from lrprobe.service.app import create_app
from lrprobe.service.dashboard.example import example_checkpoint
from lrprobe.service.db import make_engine, make_sessionmaker
from lrprobe.service.settings import Settings
from tests.support.settings import make_settings

CHROMIUM = os.environ.get("LRPROBE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
BROWSER_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--disable-extensions",
]  # fmt: skip

pytestmark = pytest.mark.slow


def _require_browser() -> None:
    reason = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "the playwright package is not installed (pip install 'playwright>=1.45,<2')"
    if reason is None and not Path(CHROMIUM).exists():
        reason = f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests must run in CI: {reason}")
        pytest.skip(reason)


class RunnerQueue:
    """Runs each sent job with the real worker runner in a thread of this process."""

    def __init__(self, settings: Settings) -> None:
        from lrprobe.worker.runner import WorkerContext

        self.engine = make_engine(settings.resolved_database_url)
        self.context = WorkerContext.create(settings, make_sessionmaker(self.engine))
        self.threads: list[threading.Thread] = []

    def send(self, job_id: str, time_limit_s: float | None) -> None:
        from lrprobe.worker.runner import run_job

        thread = threading.Thread(target=run_job, args=(self.context, job_id), daemon=True)
        self.threads.append(thread)
        thread.start()

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        for thread in self.threads:
            thread.join(60)
        self.engine.dispose()


@dataclass
class Server:
    url: str
    key_a: str
    key_b: str
    data_dir: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    _require_browser()
    import uvicorn

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    settings = make_settings(data_dir, torch_threads=1, rate_limit_per_minute=100_000)
    migrate.upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    sessions = make_sessionmaker(engine)
    key_a = keys.create_key(sessions, ApiKeyCreate(name="alice")).secret
    key_b = keys.create_key(sessions, ApiKeyCreate(name="bob")).secret
    engine.dispose()
    queue = RunnerQueue(settings)
    port = _free_port()
    config = uvicorn.Config(
        create_app(settings, queue=queue), host="127.0.0.1", port=port, log_level="warning",
        lifespan="on",
    )  # fmt: skip
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started, "uvicorn did not start"
    try:
        yield Server(f"http://127.0.0.1:{port}", key_a, key_b, data_dir)
    finally:
        uv.should_exit = True
        thread.join(30)
        queue.close()


def _sign_in(page, server: Server, key: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{server.url}/ui/jobs")
    assert "/ui/sign-in" in page.url
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{server.url}/ui/jobs")


def test_submit_watch_inspect_download_and_isolate(server: Server, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    checkpoint = tmp_path / "digits-mlp.safetensors"
    example_checkpoint(checkpoint)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            context = browser.new_context(
                viewport={"width": 1280, "height": 900}, accept_downloads=True,
                color_scheme="light",
            )  # fmt: skip
            page = context.new_page()
            page.set_default_timeout(20_000)
            _sign_in(page, server, server.key_a)

            page.goto(f"{server.url}/ui/jobs/new")
            page.get_by_label("Checkpoint file").set_input_files(checkpoint)
            page.get_by_role("button", name="Upload checkpoint").click()
            expect(page.get_by_text("Checkpoint uploaded")).to_be_visible()
            page.get_by_label("Data", exact=True).fill("builtin://digits")
            page.get_by_label("Optimizer you will train with").select_option("adam")
            page.get_by_label("Probe batches").fill("8")
            page.get_by_label("Batch size").fill("64")
            page.get_by_label("Held-out batches").fill("2")
            page.get_by_label("Calibration steps").fill("8")
            page.get_by_label("Micro-batch").fill("32")
            page.get_by_label("Device").select_option("cpu")
            page.get_by_label("Label").fill("digits MLP from the browser")
            page.get_by_role("button", name="Start probe").click()
            page.wait_for_url(f"{server.url}/ui/jobs/*")
            job_url = page.url

            expect(page.locator("h1 .chip")).to_have_text("succeeded", timeout=90_000)
            expect(page.locator("dl.facts")).to_contain_text(
                "micro-batches of 32 · 8 calibration steps"
            )
            bars = page.locator("svg.lr-chart rect.bar")
            expect(bars).to_have_count(3)
            labels = page.locator("svg.lr-chart .bar-row").evaluate_all(
                "rows => rows.map(r => r.getAttribute('data-group'))"
            )
            assert labels == ["layers.0", "layers.1", "layers.2"]
            expect(page.locator("svg.lr-chart .ref-line")).to_have_count(1)
            expect(page.locator("svg.coupling-chart rect.cell")).to_have_count(9)
            page.screenshot(path=str(ARTIFACTS / "dashboard-job.png"), full_page=True)

            with page.expect_download() as info:
                page.get_by_role("link", name="CSV").click()
            saved = tmp_path / "rec.csv"
            info.value.save_as(saved)
            rows = list(csv.DictReader(saved.read_text().splitlines()))
            assert [r["group"] for r in rows] == labels and all(float(r["lr"]) > 0 for r in rows)

            page.goto(f"{server.url}/ui/jobs")
            expect(page.locator("tr[data-job-id] .chip")).to_have_text(["succeeded"])
            page.screenshot(path=str(ARTIFACTS / "dashboard-jobs.png"), full_page=True)

            phone = browser.new_context(
                viewport={"width": 390, "height": 844}, color_scheme="dark", device_scale_factor=2
            )
            phone.add_cookies(context.cookies())
            mobile = phone.new_page()
            mobile.goto(job_url)
            expect(mobile.locator("svg.lr-chart rect.bar")).to_have_count(3)
            mobile.screenshot(path=str(ARTIFACTS / "dashboard-job-phone-dark.png"))
            phone.close()

            page.get_by_role("button", name="Sign out").click()
            page.wait_for_url(f"{server.url}/ui/sign-in")
            _sign_in(page, server, server.key_b)
            response = page.goto(job_url)
            assert response is not None and response.status == 404
            expect(page.get_by_text("job_not_found")).to_be_visible()
            page.goto(f"{server.url}/ui/jobs")
            expect(page.get_by_text("No jobs yet")).to_be_visible()
        finally:
            browser.close()
    if os.environ.get("LRPROBE_UPDATE_DOCS_SCREENSHOT"):
        shutil.copy(ARTIFACTS / "dashboard-job.png", Path(__file__).resolve().parents[2] / "docs")
