"""Content-addressed storage of uploaded checkpoints and datasets, through fsspec.

An artifact is stored once under its sha256 (``ROOT/sha256/ab/abcdef…``), whoever uploads it and
under whatever name: rows in ``models``/``datasets`` point at it by hash. The root is a local
directory in embedded mode and a volume or an object store URL (``s3://bucket/prefix``) in
production. Workers find an artifact with :meth:`ArtifactStore.url_for` (or
:meth:`ArtifactStore.local_path` when the store is a local directory).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from lrprobe.service.settings import Settings


class ArtifactStore:
    def __init__(self, url: str) -> None:
        fs, root = fsspec.core.url_to_fs(url)
        self.fs: Any = fs
        self.root: str = root.rstrip("/")
        self.url = url

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def key(self, sha256: str) -> str:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return f"{self.root}/sha256/{sha256[:2]}/{sha256}"

    def url_for(self, sha256: str) -> str:
        """An fsspec URL (or a local path) that ``fsspec.open`` reads the artifact from."""
        key = self.key(sha256)
        return key if self.is_local else self.fs.unstrip_protocol(key)

    def local_path(self, sha256: str) -> Path | None:
        """The artifact's path when the store is a local directory, else None."""
        return Path(self.key(sha256)) if self.is_local else None

    def exists(self, sha256: str) -> bool:
        return bool(self.fs.exists(self.key(sha256)))

    def open(self, sha256: str) -> BinaryIO:
        return self.fs.open(self.key(sha256), "rb")

    def put(self, source: Path, sha256: str) -> str:
        """Store the file ``source`` whose digest is ``sha256``; a no-op if already stored.

        Locally the file is copied to a temporary name and renamed, so a reader never sees a
        partial artifact and concurrent uploads of the same content are harmless.
        """
        key = self.key(sha256)
        if self.fs.exists(key):
            return key
        parent = key.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if self.is_local:
            partial = f"{key}.{uuid.uuid4().hex}.partial"
            self.fs.put_file(os.fspath(source), partial)
            os.replace(partial, key)
        else:
            self.fs.put_file(os.fspath(source), key)
        return key

    def delete(self, sha256: str) -> None:
        """Remove the artifact (nothing if it is not there)."""
        key = self.key(sha256)
        if self.fs.exists(key):
            self.fs.rm_file(key)


def local_path(settings: Settings, sha256: str) -> Path:
    """The artifact ``sha256`` of ``settings``' store as a local file: its own path in a local
    store, else a copy cached in ``DATA_DIR/cache/artifacts``. Raises FileNotFoundError if
    the store does not have it."""
    store = ArtifactStore(settings.resolved_artifact_url)
    path = store.local_path(sha256)
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(f"artifact {sha256} is not in {store.url}")
        return path
    cache = Path(settings.data_dir).resolve() / "cache" / "artifacts"
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / sha256
    if target.is_file():
        return target
    partial = cache / f"{sha256}.{uuid.uuid4().hex}.partial"
    try:
        with store.open(sha256) as source, partial.open("wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target
