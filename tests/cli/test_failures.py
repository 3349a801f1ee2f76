"""Every `lrprobe` command fails cleanly in the three situations a new user meets first: a data
folder that does not exist yet, a service that is down, and a wrong key. Each failure is one line
``error: … [code]`` with the documented exit status, never a traceback.

The service is a real ``lrprobe serve`` started on a fresh data folder; the commands run
in-process against it. The table must name every command of the CLI, so a new command cannot
skip the check.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from lrprobe.cli.app import app

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Case:
    command: str  # the command's path, as `lrprobe --help` lists it
    situation: str  # "fresh data dir", "service down" or "wrong key"
    args: tuple[str, ...]
    exit_code: int
    code: str | None  # the problem code ending the line; None: the command succeeds


# Arguments each command over the API needs to get as far as the service.
REMOTE: dict[str, tuple[str, ...]] = {
    "submit": ("--model-id", "m", "--data", "builtin://digits"),
    "jobs ls": (),
    "jobs show": ("j",),
    "jobs wait": ("j",),
    "jobs cancel": ("j",),
    "jobs export": ("j",),
    "models upload": ("{checkpoint}",),
    "models show": ("m",),
    "datasets upload": ("{dataset}",),
    "keys create": ("ci", "--api-key", "{key}"),
    "keys revoke": ("k", "--api-key", "{key}"),
    "keys list": ("--api-key", "{key}"),
}

CASES: list[Case] = [
    *(Case(c, "service down", a, 1, "connection_error") for c, a in REMOTE.items()),
    *(Case(c, "wrong key", a, 3, "unauthorized") for c, a in REMOTE.items()),
    # Without --api-key, `keys` works on the database directly: none before the first start.
    Case("keys create", "fresh data dir", ("ci",), 1, "database_not_initialized"),
    Case("keys revoke", "fresh data dir", ("k",), 1, "database_not_initialized"),
    Case("keys list", "fresh data dir", (), 1, "database_not_initialized"),
    Case(
        "probe",
        "fresh data dir",
        ("--model", "{data_dir}/absent.safetensors", "--data", "builtin://digits"),
        1,
        "checkpoint_not_found",
    ),
    Case(
        "serve",
        "fresh data dir",
        ("--port", "{busy_port}", "--no-worker"),
        1,
        "address_unavailable",
    ),
    Case("migrate", "fresh data dir", (), 0, None),  # creates the folder and the database
]

# Commands that take no data folder, no service and no key: their one failure, a missing extra,
# is checked on a real base install by tests/test_wheel.py.
NO_SERVICE_NO_KEY = {"demo"}


def command_paths(command: Any, prefix: str = "") -> set[str]:
    if hasattr(command, "commands"):  # a group (typer vendors its own click)
        paths: set[str] = set()
        for name, sub in command.commands.items():
            paths |= command_paths(sub, f"{prefix} {name}".strip())
        return paths
    return {prefix}


def test_the_table_names_every_command() -> None:
    every = command_paths(typer.main.get_command(app))
    assert {c.command for c in CASES} | NO_SERVICE_NO_KEY == every
    for situation in ("service down", "wrong key"):
        assert {c.command for c in CASES if c.situation == situation} == set(REMOTE)


@dataclass(frozen=True)
class Service:
    url: str
    port: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`lrprobe serve` on a data folder that does not exist yet (API only: no probe runs)."""
    data_dir = tmp_path_factory.mktemp("served") / "not-yet"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRPROBE_")}
    env["LRPROBE_DATA_DIR"] = str(data_dir)
    # Every wrong-key case comes from 127.0.0.1: past the failed-key throttle (tested in
    # tests/reliability) they would get 429 instead of the 401 each case checks.
    env["LRPROBE_SIGN_IN_FAILURES_PER_MINUTE"] = "10000"
    log = data_dir.parent / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "lrprobe.cli", "serve", "--port", str(port), "--no-worker"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"lrprobe serve did not answer /healthz:\n{log.read_text()}")
            time.sleep(0.3)
        yield Service(url, port)
    finally:
        process.terminate()
        process.wait(30)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.command}, {c.situation}")
def test_every_command_fails_in_one_line(case: Case, service: Service, tmp_path: Path) -> None:
    checkpoint = tmp_path / "net.safetensors"
    checkpoint.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")  # valid, empty header
    dataset = tmp_path / "d.csv"
    dataset.write_text("a,y\n1,0\n")
    values = {
        "checkpoint": str(checkpoint), "dataset": str(dataset), "data_dir": str(tmp_path),
        "key": "lrp_wrongwrongwrongwrongwrong", "busy_port": str(service.port),
    }  # fmt: skip
    # "service down": a port nothing listens on; the other situations talk to the real service.
    url = f"http://127.0.0.1:{_free_port()}" if case.situation == "service down" else service.url
    env = {k: None for k in os.environ if k.startswith("LRPROBE_")} | {
        "LRPROBE_DATA_DIR": str(tmp_path / "not-yet"),
        "LRPROBE_URL": url,
        "LRPROBE_API_KEY": values["key"] if case.situation != "fresh data dir" else None,
    }
    args = [*case.command.split(), *(a.format(**values) for a in case.args)]

    result = CliRunner().invoke(app, args, env=env)

    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == case.exit_code, result.output
    if case.code is None:
        return
    assert result.stdout == "", result.stdout
    line = result.stderr.rstrip("\n")
    assert "\n" not in line and "Traceback" not in line, result.stderr
    assert line.startswith("error: ") and line.endswith(f"[{case.code}]"), line
