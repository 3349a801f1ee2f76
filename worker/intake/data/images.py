"""Image folders: ``root/CLASS_NAME/*.png|*.jpg|*.jpeg`` → ``(N, C, H, W)`` float tensors.

Classes are the sub-folders, numbered in sorted order of their names (as torchvision's
``ImageFolder`` does); hidden files and files with other extensions are skipped. Every image is
decoded with Pillow (PNG and JPEG decoders only), converted to RGB (``mode=rgb``, the default)
or greyscale (``mode=gray``), resized to ``size`` (default 32, or ``HxW``) with bilinear
filtering, and scaled to [0, 1]; no mean/std normalisation is applied. Options: ``size``,
``mode``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from lrprobe.worker.intake.data.dataset import Dataset, build_dataset
from lrprobe.worker.intake.data.formats import ReadRequest
from lrprobe.worker.intake.errors import IntakeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_SIZE = 32
MAX_SIZE = 4096
MAX_SOURCE_PIXELS = 1 << 25
OPTIONS = ("size", "mode")

Opener = Callable[[Path], AbstractContextManager[BinaryIO]]
DirectoryCheck = Callable[[Path], None]


def read_image_folder(
    root: Path, request: ReadRequest, open_file: Opener, check_directory: DirectoryCheck
) -> Dataset:
    """Decode the image folder at ``root``.

    ``open_file`` opens one image after checking that it may be read (it lies under a data
    root); ``check_directory`` does the same check for a class folder before it is listed.
    """
    _require_pillow(request)
    request.options.check_keys(OPTIONS)
    height, width = _size(request)
    mode = request.options.choice("mode", ("rgb", "gray"), "rgb")
    channels = 3 if mode == "rgb" else 1
    files, labels, classes = _scan(root, request, check_directory)
    decoded_bytes = len(files) * channels * height * width * 4
    if decoded_bytes > request.max_bytes:
        raise IntakeError(
            "data_too_large",
            f"{request.name} decodes to {decoded_bytes} bytes ({len(files)} images), more than "
            f"this deployment's limit of {request.max_bytes}; send fewer or smaller images.",
        )
    images = np.empty((len(files), height, width, channels), dtype=np.uint8)
    for i, path in enumerate(files):
        with open_file(path) as handle:
            images[i] = _decode(handle, path, request, mode, (width, height))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(torch.float32) / 255.0
    return build_dataset(
        request.name,
        "classification",
        x,
        torch.tensor(labels, dtype=torch.int64),
        num_classes=len(classes),
        class_names=tuple(classes),
        min_examples=request.min_examples,
    )


def _require_pillow(request: ReadRequest) -> None:
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise IntakeError(
            "format_backend_unavailable",
            f"{request.name} is an image folder, which needs Pillow on the worker; install "
            "'lrprobe[images]', or send the images as an .npz of arrays.",
        ) from None


def _size(request: ReadRequest) -> tuple[int, int]:
    text = request.options.get("size")
    if text is None:
        return DEFAULT_SIZE, DEFAULT_SIZE
    parts = text.lower().split("x")
    try:
        values = [int(part) for part in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(1 <= v <= MAX_SIZE for v in values):
        raise IntakeError(
            "invalid_data_ref",
            f"{request.name}: size={text!r} must be N or HxW with sides in [1, {MAX_SIZE}].",
        )
    return (values[0], values[-1])


def _scan(
    root: Path, request: ReadRequest, check_directory: DirectoryCheck
) -> tuple[list[Path], list[int], list[str]]:
    try:
        class_dirs = sorted(
            entry.name
            for entry in os.scandir(root)
            if entry.is_dir() and not entry.name.startswith(".")
        )
    except OSError as exc:
        raise IntakeError(
            "data_unreadable", f"{request.name} cannot be listed ({exc.strerror})."
        ) from None
    if not class_dirs:
        raise IntakeError(
            "invalid_data",
            f"{request.name} is a folder without class sub-folders; lay images out as "
            "root/CLASS_NAME/IMAGE.png.",
        )
    files: list[Path] = []
    labels: list[int] = []
    total = 0
    for label, class_name in enumerate(class_dirs):
        class_dir = root / class_name
        check_directory(class_dir)
        found = 0
        for entry in sorted(os.scandir(class_dir), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.name.lower().endswith(IMAGE_SUFFIXES):
                continue
            if not entry.is_file():
                continue
            total += entry.stat().st_size
            if total > request.max_bytes:
                raise IntakeError(
                    "data_too_large",
                    f"{request.name} holds more than this deployment's limit of "
                    f"{request.max_bytes} bytes of images; send a smaller sample.",
                )
            files.append(class_dir / entry.name)
            labels.append(label)
            found += 1
        if not found:
            raise IntakeError(
                "invalid_data",
                f"{request.name}: the class folder {class_name!r} has no .png or .jpg images; "
                "add some or remove the folder.",
            )
    return files, labels, class_dirs


def _decode(
    handle: BinaryIO, path: Path, request: ReadRequest, mode: str, size: tuple[int, int]
) -> np.ndarray:
    from PIL import Image

    too_large = IntakeError(
        "data_too_large",
        f"{request.name}: the image {path.name!r} has more than {MAX_SOURCE_PIXELS} pixels; "
        "downscale it before sending.",
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(handle, formats=("PNG", "JPEG")) as image:
                width, height = image.size
                if width * height > MAX_SOURCE_PIXELS:
                    raise too_large
                converted = image.convert("RGB" if mode == "rgb" else "L")
                resized = converted.resize(size, Image.Resampling.BILINEAR)
                pixels = np.asarray(resized, dtype=np.uint8)
    except Image.DecompressionBombError:
        raise too_large from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise IntakeError(
            "invalid_data",
            f"{request.name}: {path.parent.name}/{path.name} is not a readable PNG or JPEG "
            f"({type(exc).__name__}); remove or re-save it.",
        ) from None
    return pixels.reshape(size[1], size[0], -1)
