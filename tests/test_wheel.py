"""The built wheel, installed as a user installs it: into fresh virtual environments (no system
site-packages, nothing of this checkout on the path), once per install a user picks.

- base (the SDK and the command): ``lrprobe --version``, ``lrprobe.Client`` without torch, and
  every command that needs an extra names it in one line;
- ``[worker]``: ``lrprobe demo`` probes;
- ``[service]``: ``lrprobe serve`` on a fresh data folder answers ``/healthz`` and ``/readyz``
  (so the migrations are in the wheel) and serves the dashboard's templates and static files.

pip's cache and the configured indexes are reused; torch is installed first and pinned, so pip
never resolves another (CUDA) build.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # the pin of the Makefile

pytestmark = pytest.mark.slow


def _clean_env() -> dict[str, str]:
    """This process's environment without what would put the checkout or our settings in play."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("LRPROBE_")}


def _run(command: list[str | Path], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in command], cwd=cwd, env=_clean_env() | env, capture_output=True,
        text=True, timeout=900, check=False,
    )  # fmt: skip


def _check(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # About 1 GB (one environment holds torch). pytest keeps only its last three base temporary
    # folders; deleting it here instead took 100 s of the run on the loaded test machine.
    return tmp_path_factory.mktemp("wheel")


def dockerfile_sources() -> list[str]:
    """The paths the Dockerfile copies into the image before it runs ``pip install .``."""
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--") for p in parts):
            *copied, dest = parts[1:]
            assert dest in ("./", f"./{copied[0]}"), line  # the layout is kept as it is
            sources += copied
    return sources


@pytest.fixture(scope="module")
def wheel(work: Path) -> Path:
    """The wheel, built from what the Dockerfile copies (so the images build too), in a folder
    of its own so the build leaves nothing in the checkout."""
    source = work / "source"
    source.mkdir()
    for name in dockerfile_sources():
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))  # fmt: skip
        else:
            shutil.copy2(ROOT / name, source / name)
    out = work / "dist"
    _check(_run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, source], work))
    (built,) = out.glob("lrprobe-*.whl")
    return built


def _venv(work: Path, name: str, *requirements: str) -> Path:
    """A fresh virtual environment with ``requirements`` installed by this interpreter's pip."""
    home = work / name
    _check(_run([sys.executable, "-m", "venv", "--without-pip", home], work))
    python = home / "bin" / "python"
    for requirement in requirements:  # in order: torch first, pinned
        # --no-compile: byte-compiling torch's files took most of the install; imports compile
        # what they use.
        _check(_run([sys.executable, "-m", "pip", "--python", python, "install", "-q",
                     "--no-compile", requirement], work))  # fmt: skip
    return home / "bin"


def test_the_wheel_holds_one_package_and_its_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"lrprobe", "lrprobe-0.1.0.dist-info"}
    for needed in (
        "lrprobe/py.typed", "lrprobe/client/py.typed", "lrprobe/worker/py.typed",
        "lrprobe/migrations/script.py.mako", "lrprobe/migrations/env.py",
        "lrprobe/migrations/versions/0001_initial_schema.py",
        "lrprobe/service/dashboard/templates/base.html",
        "lrprobe/service/dashboard/static/dashboard.css",
        "lrprobe/service/docs_assets/swagger-init.js",
        "lrprobe/worker/newton/__init__.py", "lrprobe/worker/intake/__init__.py",
        "lrprobe/worker/intake/checkpoints/__init__.py", "lrprobe/worker/intake/data/__init__.py",
        "lrprobe/rules/__init__.py", "lrprobe/rules/py.typed",
        "lrprobe-0.1.0.dist-info/licenses/LICENSE",
    ):  # fmt: skip
        assert needed in names
    migrations = {Path(n).name for n in names if n.startswith("lrprobe/migrations/versions/")}
    assert migrations == {p.name for p in (ROOT / "migrations" / "versions").glob("*.py")}
    metadata = zipfile.ZipFile(wheel).read("lrprobe-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata


EXTRA_COMMANDS = {
    ("demo",): "worker",
    ("probe", "--model", "m.safetensors", "--data", "builtin://digits"): "worker",
    ("serve",): "service",
    ("migrate",): "service",
    ("keys", "list"): "service",
}


def test_base_install_is_the_sdk_and_a_working_command(wheel: Path, work: Path) -> None:
    bin_ = _venv(work, "base", str(wheel))
    assert _check(_run([bin_ / "lrprobe", "--version"], work)).strip() == "lrprobe 0.1.0"
    loaded = _run([bin_ / "python", "-c", (
        "import sys, lrprobe; lrprobe.Client; lrprobe.AsyncClient; "
        "print(lrprobe.__file__, lrprobe.__version__, 'torch' in sys.modules)"
    )], work)  # fmt: skip
    where, version, torch_loaded = _check(loaded).split()
    assert Path(where).is_relative_to(bin_.parent) and version == "0.1.0"
    assert torch_loaded == "False"
    for module in ("client", "service", "worker", "cli", "migrations"):  # no generic names
        absent = _run([bin_ / "python", "-c", f"import {module}"], work)
        assert "ModuleNotFoundError" in absent.stderr, module
    for args, extra in EXTRA_COMMANDS.items():
        result = _run([bin_ / "lrprobe", *args], work, LRPROBE_DATA_DIR=str(work / "base-data"))
        line = result.stderr.strip()
        assert result.returncode == 1 and "\n" not in line, (args, result.stderr)
        assert f"pip install 'lrprobe[{extra}]'" in line and line.endswith("[missing_extra]")


def test_worker_install_runs_the_demo(wheel: Path, work: Path) -> None:
    bin_ = _venv(work, "worker", TORCH, f"{wheel}[worker]")
    out = _check(_run([bin_ / "lrprobe", "demo", "--batches", "4"], work, OMP_NUM_THREADS="1"))
    assert "Recommended learning rates" in out and "single-group lr" in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(wheel: Path, work: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    bin_ = _venv(work, "service", f"{wheel}[service]")
    port = _free_port()
    log = work / "serve.log"
    data_dir = work / "service-data" / "not-yet"
    with log.open("w") as out:
        process = subprocess.Popen(
            [bin_ / "lrprobe", "serve", "--port", str(port)], cwd=work, stdout=out,
            stderr=subprocess.STDOUT, env=_clean_env() | {"LRPROBE_DATA_DIR": str(data_dir)},
        )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}", process, log
    finally:
        process.terminate()
        process.wait(30)


def test_service_install_serves(served: tuple[str, subprocess.Popen[bytes], Path]) -> None:
    url, process, log = served
    deadline = time.monotonic() + 120
    while True:
        try:
            health = httpx.get(f"{url}/healthz", timeout=2)
            break
        except httpx.TransportError:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
    assert health.status_code == 200
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200, log.read_text()
    sign_in = httpx.get(f"{url}/ui/sign-in", timeout=10)
    assert sign_in.status_code == 200 and "<form" in sign_in.text
    assert httpx.get(f"{url}/ui/static/dashboard.css", timeout=10).status_code == 200
    for asset in ("swagger-init.js", "swagger-ui-bundle.js"):  # /docs from local files
        assert httpx.get(f"{url}/docs/assets/{asset}", timeout=10).status_code == 200
    text = log.read_text()
    assert "Admin API key (shown once, keep it): lrp_" in text
    assert "No embedded worker" in text and "pip install 'lrprobe[worker]'" in text


def test_the_readme_documents_every_extra() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    install = (ROOT / "README.md").read_text().split("## Install", 1)[1].split("\n## ", 1)[0]
    rows = {m for line in install.splitlines() for m in re.findall(r"^\| `?([\w`, ]+?)`? \|", line)}
    documented = {name.strip(" `") for row in rows for name in row.split(",")}
    assert set(extras) <= documented, set(extras) - documented
