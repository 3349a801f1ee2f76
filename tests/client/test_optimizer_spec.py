"""The job spec's optimizer: every optimizer the probe follows, strict options, and parameter
groups with their own hyperparameters."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lrprobe.client.schemas import OptimizerSpec


def test_each_optimizer_has_its_own_defaults() -> None:
    assert OptimizerSpec.model_validate("lion").betas == (0.9, 0.99)
    assert OptimizerSpec.model_validate("adagrad").eps == 1e-10
    assert OptimizerSpec.model_validate("rmsprop").momentum == 0.0
    assert OptimizerSpec.model_validate("momentum").momentum == 0.9
    # Only 'momentum' has a buffer by default: a plain-SGD or Adam job does not echo one.
    assert [OptimizerSpec.model_validate(n).momentum for n in ("sgd", "adam", "lion")] == [0.0] * 3
    assert OptimizerSpec.model_validate({"name": "rmsprop", "momentum": 0.5}).momentum == 0.5
    given = OptimizerSpec.model_validate({"name": "lion", "betas": [0.95, 0.98]})
    assert given.betas == (0.95, 0.98)


def test_decay_and_no_decay_groups_are_accepted() -> None:
    spec = OptimizerSpec.model_validate(
        {"name": "adamw", "weight_decay": 0.1,
         "param_groups": [{"params": ["0.bias", "1.weight"], "weight_decay": 0.0}]}
    )  # fmt: skip
    assert spec.param_groups[0].weight_decay == 0.0 and spec.param_groups[0].betas is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "adam", "options": {"alpha": 0.9}}, "adam takes no option alpha"),
        (
            {"name": "sgd", "param_groups": [{"params": ["a"], "options": {"amsgrad": True}}]},
            "sgd takes no option amsgrad",
        ),
        (
            {"name": "sgd", "param_groups": [{"params": ["a"]}, {"params": ["a"]}]},
            "in two parameter groups",
        ),
        (
            {"name": "adamw", "param_groups": [{"params": ["a"], "weight_decay": -1}]},
            "greater than or equal to 0",
        ),
        ({"name": "adamw", "param_groups": [{"params": ["a"], "lr": 0.1}]}, "Extra inputs"),
        ({"name": "adamw", "param_groups": [{"params": []}]}, "at least 1 item"),
        ({"name": "rprop"}, "Input should be"),
        ({"name": "rmsprop", "options": {"centered": 1.0}}, "centered must be true or false"),
        ({"name": "adagrad", "options": {"lr_decay": True}}, "lr_decay must be a number"),
    ],
)
def test_bad_optimizer_specs_are_refused_with_what_is_wrong(body, message) -> None:
    with pytest.raises(ValidationError, match=message):
        OptimizerSpec.model_validate(body)
