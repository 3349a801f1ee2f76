"""The local file of a stored artifact (a checkpoint or dataset upload), by its sha256.

Artifacts are content-addressed (``lrprobe.service.artifacts``). A local store is read in
place; a remote one (an fsspec URL) is downloaded once into the data dir's cache and checked
against its sha256 before use.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

from lrprobe.service.artifacts import ArtifactStore
from lrprobe.service.settings import Settings
from lrprobe.worker.intake.errors import IntakeError


def artifact_file(settings: Settings, sha256: str) -> Path:
    """The local file of the artifact with this sha256 (downloaded to a cache if remote)."""
    store = ArtifactStore(settings.resolved_artifact_url)
    missing = IntakeError(
        "artifact_missing", "The uploaded file is missing from the artifact store; upload it again."
    )
    local = store.local_path(sha256)
    if local is not None:
        if not local.is_file():
            raise missing
        return local
    cache = settings.data_dir.resolve() / "cache" / "artifacts"
    target = cache / sha256
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f"{sha256}.{uuid.uuid4().hex}.partial"
    digest = hashlib.sha256()
    try:
        with store.open(sha256) as source, partial.open("wb") as sink:
            while chunk := source.read(1 << 20):
                digest.update(chunk)
                sink.write(chunk)
    except FileNotFoundError:
        partial.unlink(missing_ok=True)
        raise missing from None
    if digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise IntakeError(
            "artifact_corrupt",
            "The stored file does not match its sha256 any more; upload it again.",
        )
    partial.replace(target)
    return target
