"""Uploads checked by the intake's rulebook (``lrprobe.rules``) at ``POST /v1/models`` and
``POST /v1/datasets``, its refusals rendered as the service's problems."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lrprobe.rules import RuleError, checkpoint_inspection, dataset_inspection
from lrprobe.rules.checkpoint_inspection import CheckpointInfo
from lrprobe.rules.dataset_inspection import DatasetInfo
from lrprobe.service.errors import ServiceError, UnprocessableError, UnsupportedMediaTypeError

# A file of a kind lrprobe does not read at all is a 415; one it reads but refuses, a 422.
_MEDIA_TYPE_CODES = frozenset({"unsupported_checkpoint", "unsupported_data_format"})


def problem(refusal: RuleError, errors: list[dict[str, Any]] | None = None) -> ServiceError:
    """The service's problem for a rule's refusal, with the rule's code and sentence."""
    kind = UnsupportedMediaTypeError if refusal.code in _MEDIA_TYPE_CODES else UnprocessableError
    return kind(refusal.detail, code=refusal.code, errors=errors)


def inspect_checkpoint(
    path: Path, *, arch: str | None, arch_config: dict[str, Any] | None, allow_pt2: bool
) -> CheckpointInfo:
    try:
        return checkpoint_inspection.inspect_checkpoint(
            path, arch=arch, arch_config=arch_config, allow_pt2=allow_pt2
        )
    except RuleError as refusal:
        raise problem(refusal) from None


def inspect_dataset(path: Path, filename: str) -> DatasetInfo:
    try:
        return dataset_inspection.inspect_dataset(path, filename)
    except RuleError as refusal:
        raise problem(refusal) from None
