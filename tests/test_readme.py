"""The README's quick start runs exactly as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    text = README.read_text()
    block = re.search(r"<!-- quickstart[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert block, "the README lost its quick-start block"
    namespace: dict[str, object] = {}
    exec(compile(block.group(1), str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "single-group lr" in printed
    optimizer = namespace["optimizer"]
    assert len(optimizer.param_groups) == 3  # type: ignore[attr-defined]
    # Sane advice, not just a printed table: a diverging probe once recommended lr ≈ 5e10 and
    # flagged used layers as unused here.
    result = namespace["result"]
    for group in result.groups:  # type: ignore[attr-defined]
        assert 1e-4 < group.lr < 100, (group.name, group.lr)
        assert "unused" not in group.flags, group.name


def test_the_checkpoint_block_writes_a_file_the_shell_and_the_service_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lrprobe.worker.intake.checkpoints import load_checkpoint

    text = README.read_text()
    block = re.search(r"<!-- checkpoint[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert block, "the README lost its checkpoint block"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(block.group(1), str(README), "exec"), namespace)
    loaded = load_checkpoint(tmp_path / "my_mlp.safetensors")
    assert loaded.arch == "mlp"  # named in the file: no --arch needed
    saved = namespace["model"].state_dict()  # type: ignore[attr-defined]
    for name, tensor in loaded.model.state_dict().items():
        assert (tensor == saved[name]).all(), name
