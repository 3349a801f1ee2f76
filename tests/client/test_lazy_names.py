"""The package's top-level names load lazily, and one that needs the worker extra says so."""

from __future__ import annotations

import sys

import pytest

import lrprobe


def test_a_name_that_needs_torch_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    for module in [m for m in sys.modules if m.startswith("lrprobe.worker")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.delitem(vars(lrprobe), "probe", raising=False)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'lrprobe\[worker\]'") as info:
        lrprobe.probe  # noqa: B018
    assert info.value.name == "torch" and "lrprobe.probe needs the worker extra" in str(info.value)


def test_other_missing_modules_and_unknown_names_are_not_disguised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lrprobe.nope  # noqa: B018
    monkeypatch.setitem(lrprobe._LAZY, "broken", "lrprobe.not_a_module")
    with pytest.raises(ModuleNotFoundError) as info:
        lrprobe.broken  # noqa: B018
    assert "worker extra" not in str(info.value)
