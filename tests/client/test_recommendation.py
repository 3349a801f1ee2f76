"""Applying a recommendation: torch.optim parameter groups matched by name, a check that the
model is the probed one, and its other shapes (table, dict, JSON, DataFrame)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from lrprobe.client import Recommendation
from tests.client.fakes import group_body, recommendation_body


def net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def test_param_groups_build_an_sgd_optimizer_with_one_lr_per_group() -> None:
    model = net()
    rec = Recommendation(recommendation_body())
    optimizer = torch.optim.SGD(rec.param_groups(model))
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.02]
    assert [g["name"] for g in optimizer.param_groups] == ["0", "2"]
    assert optimizer.param_groups[0]["params"][0] is model[0].weight


def test_a_model_with_other_parameters_is_refused_by_name() -> None:
    rec = Recommendation(recommendation_body())
    other = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"no parameters named 2\.weight, 2\.bias") as caught:
        rec.param_groups(torch.nn.Sequential(torch.nn.Linear(4, 3)))
    assert "is this the model that was probed" in str(caught.value)
    with pytest.raises(ValueError, match=r"did not cover its trainable parameters 1\.weight"):
        rec.param_groups(other)


def test_frozen_parameters_outside_the_probe_are_allowed() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3),
                                torch.nn.Linear(3, 3))  # fmt: skip
    model[3].requires_grad_(False)
    assert len(Recommendation(recommendation_body()).param_groups(model)) == 2


def test_a_group_without_a_finite_lr_gets_the_default_or_the_global_lr() -> None:
    body = recommendation_body()
    body["groups"][1] = group_body("2", ["2.weight", "2.bias"], None, flags=["unused"])
    rec = Recommendation(body)
    assert rec.param_groups(net())[1]["lr"] == 0.05
    assert rec.param_groups(net(), default_lr=0.3)[1]["lr"] == 0.3
    body["single_group_lr"] = None
    with pytest.raises(ValueError, match="group '2' has no usable learning rate"):
        Recommendation(body).param_groups(net())


def test_param_groups_needs_a_torch_module() -> None:
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        Recommendation(recommendation_body()).param_groups(object())


def test_param_groups_says_how_to_get_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="pip install torch"):
        Recommendation(recommendation_body()).param_groups(object())


def test_groups_are_typed() -> None:
    group = Recommendation(recommendation_body()).groups[1]
    assert (group.name, group.lr, group.interval, group.flags) == (
        "2",
        0.02,
        (0.01, 0.04),
        ("noisy",),
    )
    assert group.param_names == ("2.weight", "2.bias")


def test_dict_and_json_round_trip_and_keep_unknown_fields() -> None:
    rec = Recommendation(recommendation_body())
    assert rec.to_dict()["a_future_field"] == [1, 2]
    again = Recommendation.from_json(rec.to_json())
    assert again == rec and Recommendation.from_dict(json.loads(rec.to_json())) == rec


def test_repr_is_a_readable_table() -> None:
    text = repr(Recommendation(recommendation_body(), job_id="j1"))
    lines = text.splitlines()
    assert lines[0] == "Recommendation(job=j1)"
    assert lines[1].split() == ["group", "params", "lr", "interval", "(10-90%)", "eta", "flags"]
    assert lines[3].split()[:3] == ["0", "10", "0.1"] and lines[4].endswith("noisy")
    assert "single-group lr: 0.05 (interval 0.02 – 0.08)" in text
    assert str(Recommendation(recommendation_body())) == "\n".join(lines[1:])


def test_to_dataframe_has_a_row_per_group() -> None:
    pytest.importorskip("pandas")
    frame = Recommendation(recommendation_body()).to_dataframe()
    assert list(frame.index) == ["0", "2"] and frame.loc["2", "lr"] == 0.02


def test_to_dataframe_says_how_to_get_pandas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        Recommendation(recommendation_body()).to_dataframe()
