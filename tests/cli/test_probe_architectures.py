"""The README's `lrprobe probe` examples: every built-in architecture and a custom `.pt2` export,
each on a real bundled dataset, from the checkpoints that examples/checkpoints.py writes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
from typer.testing import CliRunner

from lrprobe.cli.app import app
from lrprobe.worker.intake.checkpoints.pt2 import pt2_available

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "checkpoints.py"

# name: (checkpoint, data, extra arguments, groups of the default partition: per layer,
# coarsened to at most 16 by max_groups="auto", so the 19-layer ResNet gets 16)
CASES: dict[str, tuple[str, str, list[str], int]] = {
    "mlp": ("mlp.safetensors", "builtin://breast_cancer", [], 3),
    "cnn": ("cnn.safetensors", "builtin://digits?shape=image", [], 3),
    "resnet": ("resnet.safetensors", "builtin://digits?shape=image", [], 16),
    "gpt": (
        "gpt.safetensors",
        "tokens.npy",
        ["--block-size", "32", "--loss", "lm_cross_entropy"],
        15,
    ),
    "pt2": ("custom.pt2", "builtin://mnist1d?shape=channels", ["--allow-pt2"], 4),
}


def _examples_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lrprobe_examples", EXAMPLES)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def examples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("examples-out")
    _examples_module().write_all(out)
    return out


@pytest.mark.parametrize(
    "case",
    [
        "mlp",
        "cnn",
        "resnet",
        "gpt",
        pytest.param(
            "pt2",
            marks=[
                pytest.mark.skipif(not pt2_available(), reason="pt2 intake audited for 2.13"),
                # torch's own notice when the probe copies an exported module (copy.deepcopy)
                pytest.mark.filterwarnings("ignore:.*treespec.*:FutureWarning"),
            ],
        ),
    ],
)
def test_readme_probe_runs(
    examples_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    checkpoint, data, extra, groups = CASES[case]
    monkeypatch.chdir(examples_dir)
    # Wide enough that no row of the table wraps (long group names and small rates do at 80).
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "result.json"
    budget = ["--batches", "2", "--batch-size", "32", "--heldout-batches", "1"]
    args = ["probe", "--model", checkpoint, "--data", data, *extra, *budget, "--device", "cpu"]
    result = runner.invoke(app, [*args, "--json", str(out)])

    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("│")]
    names = [g["name"] for g in json.loads(out.read_text())["groups"]]
    assert len(names) == len(rows) == groups
    assert "single-group lr" in result.output
