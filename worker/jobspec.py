"""The probe spec as the worker reads it from ``jobs.spec``.

The API validated the spec with ``lrprobe.client.schemas.JobCreate`` before it stored it; the
worker parses the stored JSON again with the same model (a row may come from an older API
version), so there is one schema for both sides.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from lrprobe.client.schemas import JobCreate


class SpecError(ValueError):
    """The stored spec does not validate (a row written by an incompatible API version)."""


def parse_spec(data: dict[str, Any]) -> JobCreate:
    """The validated spec; raises :class:`SpecError` with pydantic's message."""
    try:
        return JobCreate.model_validate(data)
    except ValidationError as exc:
        raise SpecError(str(exc)) from None
