"""Data references checked at submit time by the intake's rulebook (``lrprobe.rules.data_refs``),
without reading any data or resolving any host; the worker checks every reference again, fully.
``upload://`` references, which only the service can resolve, are checked here."""

from __future__ import annotations

from collections.abc import Callable

from lrprobe.rules import RuleError
from lrprobe.rules.data_refs import (
    builtin_name,
    check_local_path,
    check_remote,
    file_path,
    split_reference,
)
from lrprobe.service.errors import DatasetNotFoundError
from lrprobe.service.settings import Settings
from lrprobe.service.upload_formats import problem

# http:// is left out: the worker admits it only where its policy allows insecure downloads.
SCHEMES = ("builtin", "file", "https", "s3", "gs", "upload")


def check_data_ref(uri: str, settings: Settings, owns_dataset: Callable[[str], bool]) -> None:
    """Raise ``UnprocessableError`` (intake codes) or ``DatasetNotFoundError`` if ``uri`` cannot
    be used. ``owns_dataset(id)`` says whether the submitting key uploaded that dataset."""
    try:
        parts = split_reference(uri, SCHEMES)
        if parts.scheme == "upload":
            dataset_id = parts.netloc or parts.path.lstrip("/")
            if not dataset_id or "/" in dataset_id or not owns_dataset(dataset_id):
                raise DatasetNotFoundError(
                    f"There is no uploaded dataset {dataset_id!r}; upload it with POST "
                    "/v1/datasets and use the upload://ID it returns."
                )
        elif parts.scheme == "builtin":
            builtin_name(parts)
        elif parts.scheme == "file":
            check_local_path(file_path(parts), settings.data_roots)
        else:
            check_remote(parts, settings.allowed_data_hosts)
    except RuleError as refusal:
        where = [{"loc": ["body", "data"], "msg": refusal.detail, "type": refusal.code}]
        raise problem(refusal, where) from None
