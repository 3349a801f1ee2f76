"""`lrprobe probe` as a user runs it: a table and JSON, or one clear line and exit code 1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lrprobe.cli.app import app
from lrprobe.worker.intake.checkpoints.architectures import get_architecture
from lrprobe.worker.intake.checkpoints.loading import save_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = get_architecture("mlp")
    config = spec.validate_config({"sizes": [64, 32, 10], "activation": "tanh"})
    path = tmp_path_factory.mktemp("ckpt") / "mlp.safetensors"
    save_checkpoint(spec.build(config), path, "mlp", config)
    return path


def test_probe_prints_a_table_and_writes_json(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    args = ["probe", "--model", str(checkpoint), "--data", "builtin://digits", "--batches", "4"]
    result = runner.invoke(app, [*args, "--batch-size", "64", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "layers.0" in result.output and "single-group lr" in result.output
    data = json.loads(out.read_text())
    assert [g["name"] for g in data["groups"]] == ["layers.0", "layers.1"]
    assert all(g["lr"] > 0 for g in data["groups"])


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ("builtin://nope", "unknown_builtin_dataset"),
        ("builtin://wine", "incompatible_model_input"),
        ("file:///etc/passwd", "data_ref_refused"),
        ("pickled.npz", "pickled_data_refused"),
    ],
)
def test_bad_data_is_one_line_with_a_code(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: str, code: str
) -> None:
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "pickled.npz", x=np.array([object()], dtype=object), y=np.zeros(1))
    result = runner.invoke(app, ["probe", "--model", str(checkpoint), "--data", data])
    assert result.exit_code == 1
    assert f"[{code}]" in result.output
    assert "Traceback" not in result.output


def test_a_pickled_checkpoint_is_refused(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"weight": [1.0]}))
    result = runner.invoke(app, ["probe", "--model", str(path), "--data", "builtin://digits"])
    assert result.exit_code == 1
    assert "[pickle_refused]" in result.output


def test_unknown_optimizer_names_the_choices(checkpoint: Path) -> None:
    args = ["probe", "--model", str(checkpoint), "--data", "builtin://digits"]
    result = runner.invoke(app, [*args, "--optimizer", "rprop"])
    assert result.exit_code == 1
    assert "sgd, momentum, adam, adamw" in result.output
