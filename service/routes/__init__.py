"""HTTP routes: parse, call one use case, return a schema (no SQL, no commits here)."""

from __future__ import annotations

from typing import Any

from lrprobe.client.schemas import Problem
from lrprobe.service.errors import PROBLEM_MEDIA_TYPE


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the problem+json errors a route may return."""
    return {
        status: {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}, "description": "Problem"}
        for status in statuses
    }
