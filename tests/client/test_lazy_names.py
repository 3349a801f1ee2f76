"""The package's top-level names load lazily, and one that needs the worker extra says so."""

from __future__ import annotations

import subprocess
import sys

import pytest

import lrprobe

# A fresh interpreter where torch cannot be imported: the import system is left as it was for
# the other tests.
WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None
import lrprobe
try:
    lrprobe.probe
except ModuleNotFoundError as exc:
    print(exc.name, exc, sep="|")
"""


def test_a_name_that_needs_torch_names_the_extra_to_install() -> None:
    ran = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH], capture_output=True, text=True, timeout=60
    )
    name, message = ran.stdout.strip().split("|")
    assert name == "torch"
    assert message == (
        "lrprobe.probe needs the worker extra (torch is not installed): "
        "pip install 'lrprobe[worker]'"
    )


def test_other_missing_modules_and_unknown_names_are_not_disguised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lrprobe.nope  # noqa: B018
    monkeypatch.setitem(lrprobe._LAZY, "broken", "lrprobe.not_a_module")
    with pytest.raises(ModuleNotFoundError) as info:
        lrprobe.broken  # noqa: B018
    assert "worker extra" not in str(info.value)
