"""The worker reads a stored spec with the API's own schema: what the API refuses, it refuses."""

from __future__ import annotations

from typing import Any

import pytest

from lrprobe.client.schemas import JobCreate
from lrprobe.worker.jobspec import SpecError, parse_spec

STORED = {"model_id": "m1", "data": "builtin://digits", "loss": "mse"}


def test_a_stored_spec_is_read_with_the_wire_schema_and_its_defaults() -> None:
    spec = parse_spec(STORED)
    assert spec == JobCreate(model_id="m1", data="builtin://digits", loss="mse")
    assert spec.budget.batches == 40


@pytest.mark.parametrize(
    "change",
    [
        {"optimizer": {"name": "momentum", "dampening": 1.0}},  # the API allows [0, 1)
        {"budget": {"time_limit_s": 5}},  # the API allows at least 10 s
        {"loss": "hinge"},
    ],
)
def test_a_spec_the_api_refuses_is_refused_with_pydantic_s_reason(change: dict[str, Any]) -> None:
    with pytest.raises(SpecError, match=next(iter(change))):
        parse_spec(STORED | change)
