"""Readers for data files: ``.npz``, ``.pt``, Parquet, CSV and token streams (``.npy``/``.bin``).

Each reader gets an already opened, size-checked binary file and returns a validated
``Dataset``; every failure is an ``IntakeError``. Nothing is unpickled: ``.npz``/``.npy`` are read
with ``allow_pickle=False`` and ``.pt`` only with ``torch.load(..., weights_only=True)``.

Formats and their options (given as ``?key=value`` on ``file://``/``builtin://`` references,
``#key=value`` on remote ones):

- ``.npz`` (``x``, ``y`` arrays) and ``.pt``/``.pth`` (a dict of tensors with keys ``x``,
  ``y``): ``task=classification|regression`` (default: integer ``y`` is classification,
  floating ``y`` regression), ``num_classes=K``.
- ``.csv`` (UTF-8, a header row, comma separated) and ``.parquet``: every column but the target
  is a numeric feature; ``target=COLUMN`` (default: the column named ``target``, else the last
  column), ``task``, ``num_classes``. Text targets become classes numbered in sorted order of
  their names (as scikit-learn's ``LabelEncoder`` and torchvision's ``ImageFolder`` do). Without
  ``task``, a numeric CSV target is classification when every value is a whole number ≥ 0 and
  regression otherwise; a Parquet target is classification when its column type is integer or
  boolean.
- ``.npy`` (a 1-D integer array) and ``.bin`` (raw little-endian token ids, as nanoGPT writes
  them; ``dtype=uint16`` by default, or ``uint32``): token streams for language models; need
  ``block_size`` (here or as the ``block_size`` argument); ``vocab_size=V`` declares the
  vocabulary (default: largest id + 1).
- ``format=NAME`` overrides the extension (``npz``, ``pt``, ``parquet``, ``csv``, ``npy``,
  ``bin``), e.g. for a URL without one.
"""

from __future__ import annotations

import csv
import io
import pickle
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import torch

from lrprobe.worker.intake.data.dataset import Dataset, DatasetKind, build_dataset
from lrprobe.worker.intake.data.options import DataOptions
from lrprobe.worker.intake.errors import IntakeError

FORMAT_BY_SUFFIX = {
    ".npz": "npz",
    ".pt": "pt",
    ".pth": "pt",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".npy": "npy",
    ".bin": "bin",
}
FORMATS = ("npz", "pt", "parquet", "csv", "npy", "bin")
TASKS = ("classification", "regression")
MAX_BLOCK_SIZE = 1 << 20
MAX_CLASSES = 1 << 31

_COMMON = ("format",)
_LABELLED = (*_COMMON, "task", "num_classes")
OPTIONS_BY_FORMAT: dict[str, tuple[str, ...]] = {
    "npz": _LABELLED,
    "pt": _LABELLED,
    "csv": (*_LABELLED, "target"),
    "parquet": (*_LABELLED, "target"),
    "npy": (*_COMMON, "block_size", "vocab_size"),
    "bin": (*_COMMON, "block_size", "vocab_size", "dtype"),
}


@dataclass(frozen=True)
class ReadRequest:
    """What a reader needs besides the file: names for messages, options and limits."""

    name: str
    options: DataOptions
    max_bytes: int
    min_examples: int
    block_size: int | None = None


def read_data_file(handle: BinaryIO, fmt: str, request: ReadRequest) -> Dataset:
    """Parse ``handle`` as ``fmt`` (one of ``FORMATS``) into a validated ``Dataset``."""
    request.options.check_keys(OPTIONS_BY_FORMAT[fmt])
    reader: Callable[[BinaryIO, ReadRequest], Dataset] = _READERS[fmt]
    return reader(handle, request)


def format_for(suffix: str, options: DataOptions) -> str:
    """The format named by ``format=`` or else by the file name's ``suffix``."""
    named = options.get("format")
    if named is not None:
        if named not in FORMATS:
            raise IntakeError(
                "unsupported_data_format",
                f"{options.source}: format={named!r} is not one of {', '.join(FORMATS)}.",
            )
        return named
    fmt = FORMAT_BY_SUFFIX.get(suffix.lower())
    if fmt is None:
        raise IntakeError(
            "unsupported_data_format",
            f"{options.source}: files ending in {suffix or '(no extension)'!r} are not a data "
            "format lrprobe reads; send .npz, .pt, .parquet, .csv, .npy or .bin (or an image "
            "folder), or name the format with format=....",
        )
    return fmt


# --- .npz and .pt ---------------------------------------------------------------------------


def _read_npz(handle: BinaryIO, request: ReadRequest) -> Dataset:
    _check_zip(handle, request, "an .npz archive (np.savez)")
    try:
        with np.load(handle, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise _invalid(request, "is a single .npy array, not an .npz with x and y")
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                raise _invalid(
                    request,
                    f"has arrays {sorted(archive.files)} but no {' or '.join(missing)}; save it "
                    "with np.savez(path, x=features, y=targets)",
                )
            x = archive["x"]
            y = archive["y"]
    except IntakeError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise _pickled(request, "np.savez(path, x=..., y=...) with numeric arrays") from None
        raise _invalid(request, f"is not a readable .npz ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise _invalid(request, f"is not a readable .npz ({type(exc).__name__})") from None
    return _labelled_dataset(
        _array_tensor(x, request, "x"), _array_tensor(y, request, "y"), request
    )


def _read_pt(handle: BinaryIO, request: ReadRequest) -> Dataset:
    if zipfile.is_zipfile(handle):
        _check_zip(handle, request, "a torch.save file")
    handle.seek(0)
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of hostile files before refusing them
            warnings.simplefilter("ignore")
            loaded = torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise _pickled(request, "torch.save({'x': x, 'y': y}, path) with plain tensors") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, … on a damaged file
        raise _invalid(
            request, f"is not a readable torch.save file ({type(exc).__name__})"
        ) from None
    if not isinstance(loaded, dict) or not all(isinstance(k, str) for k in loaded):
        raise _invalid(
            request, f"holds a {type(loaded).__name__}, not a dict of tensors with keys x and y"
        )
    tensors: dict[str, torch.Tensor] = {}
    for key in ("x", "y"):
        value = loaded.get(key)
        if not isinstance(value, torch.Tensor):
            raise _invalid(
                request,
                f"has no tensor under {key!r} (keys: {sorted(loaded)}); save it with "
                "torch.save({'x': features, 'y': targets}, path)",
            )
        if value.device.type != "cpu":
            raise _invalid(
                request, f"has {key} on the {value.device.type} device; save CPU tensors"
            )
        if value.dtype in (torch.uint16, torch.uint32, torch.uint64):
            value = value.to(torch.int64)
        tensors[key] = value.detach()
    return _labelled_dataset(tensors["x"], tensors["y"], request)


def _check_zip(handle: BinaryIO, request: ReadRequest, what: str) -> None:
    """Refuse archives whose members would decompress to more than the byte limit."""
    try:
        with zipfile.ZipFile(handle) as archive:
            total = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, EOFError):
        raise _invalid(request, f"is not {what}") from None
    finally:
        handle.seek(0)
    if total > request.max_bytes:
        raise IntakeError(
            "data_too_large",
            f"{request.name} unpacks to {total} bytes, more than this deployment's limit of "
            f"{request.max_bytes}; send a smaller sample.",
        )


def _labelled_dataset(x: torch.Tensor, y: torch.Tensor, request: ReadRequest) -> Dataset:
    task = request.options.get("task")
    if task is None:
        task = "regression" if y.is_floating_point() else "classification"
    kind = _task(request, task)
    if kind == "classification" and y.is_floating_point():
        y = _integral_labels(y, request)
    return build_dataset(
        request.name,
        kind,
        x,
        y,
        num_classes=_num_classes(request, "num_classes"),
        min_examples=request.min_examples,
    )


def _task(request: ReadRequest, value: str) -> DatasetKind:
    if value == "classification":
        return "classification"
    if value == "regression":
        return "regression"
    raise IntakeError(
        "invalid_data_ref", f"{request.name}: task={value!r} is not one of {', '.join(TASKS)}."
    )


def _integral_labels(y: torch.Tensor, request: ReadRequest) -> torch.Tensor:
    finite = torch.isfinite(y)
    if not bool(finite.all()) or not bool((y == torch.round(y)).all()):
        raise _invalid(
            request,
            "has non-integer targets, which cannot be class labels; use task=regression or send "
            "integer labels",
        )
    return y.to(torch.int64)


def _num_classes(request: ReadRequest, key: str) -> int | None:
    return request.options.optional_integer(key, 1, MAX_CLASSES)


def _array_tensor(array: np.ndarray, request: ReadRequest, which: str) -> torch.Tensor:
    if array.dtype.kind not in "biuf" or array.dtype.itemsize > 8:
        raise _invalid(
            request,
            f"has {which} of dtype {array.dtype}; send numbers (bool, integer or float arrays)",
        )
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype.kind == "u" and array.dtype.itemsize > 1:
        if array.size and int(array.max()) > np.iinfo(np.int64).max:
            raise _invalid(request, f"has {which} values too large for int64")
        array = array.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(array))


# --- CSV and Parquet ------------------------------------------------------------------------


def _read_csv(handle: BinaryIO, request: ReadRequest) -> Dataset:
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")
    try:
        rows = csv.reader(text, strict=True)
        header = next(rows, None)
        if header is None:
            raise _invalid(request, "is empty; a CSV needs a header row and data rows")
        names = [name.strip() for name in header]
        _check_header(names, request)
        columns: list[list[str]] = [[] for _ in names]
        for line_number, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) != len(names):
                raise _invalid(
                    request,
                    f"line {line_number} has {len(row)} fields but the header has {len(names)}",
                )
            for column, value in zip(columns, row, strict=True):
                column.append(value.strip())
    except UnicodeDecodeError:
        raise _invalid(request, "is not UTF-8 text") from None
    except csv.Error as exc:
        raise _invalid(request, f"is not well-formed CSV ({exc})") from None
    finally:
        text.detach()
    target_name = _target_name(names, request)
    features = [
        (name, _parse_floats(values, name, request))
        for name, values in zip(names, columns, strict=True)
        if name != target_name
    ]
    raw_target = columns[names.index(target_name)]
    numeric = _try_floats(raw_target)
    if numeric is None:
        if any(value == "" for value in raw_target):
            raise _invalid(request, f"has empty values in the target column {target_name!r}")
        return _tabular_dataset(features, np.asarray(raw_target, dtype=object), None, request)
    guess: DatasetKind = (
        "classification"
        if numeric.size and bool(np.all(numeric == np.round(numeric))) and numeric.min() >= 0
        else "regression"
    )
    return _tabular_dataset(features, numeric, guess, request)


def _check_header(names: list[str], request: ReadRequest) -> None:
    if len(names) < 2:
        raise _invalid(request, "needs at least one feature column and a target column")
    if any(not name for name in names) or len(set(names)) != len(names):
        raise _invalid(request, "needs a header row with distinct, non-empty column names")


def _target_name(names: list[str], request: ReadRequest) -> str:
    target = request.options.get("target")
    if target is None:
        return "target" if "target" in names else names[-1]
    if target not in names:
        raise IntakeError(
            "invalid_data_ref",
            f"{request.name} has no column {target!r}; its columns are {', '.join(names)}.",
        )
    return target


def _try_floats(values: list[str]) -> np.ndarray | None:
    try:
        return np.asarray(values, dtype=np.float64)
    except ValueError:
        return None


def _parse_floats(values: list[str], column: str, request: ReadRequest) -> np.ndarray:
    parsed = _try_floats(values)
    if parsed is not None:
        return parsed
    for row, value in enumerate(values, start=2):
        try:
            float(value)
        except ValueError:
            what = "an empty value" if value == "" else f"the value {value[:40]!r}"
            raise _invalid(
                request,
                f"has {what} in feature column {column!r} near data row {row}; features must "
                "be numbers (fill missing values, encode categories as numbers)",
            ) from None
    raise _invalid(request, f"has an unreadable value in column {column!r}")


def _read_parquet(handle: BinaryIO, request: ReadRequest) -> Dataset:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise IntakeError(
            "format_backend_unavailable",
            "Parquet data needs pyarrow, which this worker lacks; install 'lrprobe[parquet]' "
            "on the worker, or send the data as .csv or .npz.",
        ) from None
    try:
        parquet = pq.ParquetFile(handle)
        metadata = parquet.metadata
        # run-length and dictionary encodings shrink repetitive data before compression does,
        # so bound the decoded size by the declared rows × columns at 8 bytes a value as well
        unpacked = max(
            sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)),
            metadata.num_rows * metadata.num_columns * 8,
        )
        if unpacked > request.max_bytes:
            raise IntakeError(
                "data_too_large",
                f"{request.name} unpacks to {unpacked} bytes, more than this deployment's "
                f"limit of {request.max_bytes}; send a smaller sample.",
            )
        table = parquet.read()
    except IntakeError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _invalid(request, f"is not a readable Parquet file ({type(exc).__name__})") from None
    names = [str(name) for name in table.column_names]
    _check_header(names, request)
    target_name = _target_name(names, request)
    features: list[tuple[str, np.ndarray]] = []
    target: np.ndarray | None = None
    guess: DatasetKind | None = None
    for name, column in zip(names, table.columns, strict=True):
        if column.null_count:
            raise _invalid(
                request, f"has {column.null_count} missing values in column {name!r}; fill them"
            )
        kind = column.type
        numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind)
        if name == target_name:
            if numeric or pa.types.is_boolean(kind):
                target = column.to_numpy().astype(np.float64)
                guess = "regression" if pa.types.is_floating(kind) else "classification"
            elif _is_text(pa, kind):
                target = np.asarray(column.to_pylist(), dtype=object)
            else:
                raise _invalid(request, f"has a target column {name!r} of type {kind}")
        elif numeric or pa.types.is_boolean(kind):
            features.append((name, column.to_numpy().astype(np.float64)))
        else:
            raise _invalid(
                request,
                f"has a feature column {name!r} of type {kind}; features must be numbers",
            )
    assert target is not None
    return _tabular_dataset(features, target, guess, request)


def _is_text(pa: Any, kind: Any) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _tabular_dataset(
    features: list[tuple[str, np.ndarray]],
    target: np.ndarray,
    guess: DatasetKind | None,
    request: ReadRequest,
) -> Dataset:
    """``guess`` is the inferred task of a numeric target; ``None`` marks text labels."""
    x = torch.from_numpy(np.stack([values for _, values in features], axis=1).astype(np.float32))
    task = request.options.get("task")
    if guess is None:
        if task == "regression":
            raise _invalid(request, "has a text target, which cannot be regressed on")
        names = sorted(set(target.tolist()))
        index = {name: i for i, name in enumerate(names)}
        y = torch.tensor([index[value] for value in target.tolist()], dtype=torch.int64)
        return build_dataset(
            request.name,
            "classification",
            x,
            y,
            num_classes=_num_classes(request, "num_classes") or len(names),
            class_names=tuple(str(name) for name in names),
            min_examples=request.min_examples,
        )
    kind = _task(request, task) if task is not None else guess
    y_float = torch.from_numpy(target.astype(np.float32))
    if kind == "regression":
        return build_dataset(request.name, kind, x, y_float, min_examples=request.min_examples)
    return build_dataset(
        request.name,
        kind,
        x,
        _integral_labels(torch.from_numpy(target), request),
        num_classes=_num_classes(request, "num_classes"),
        min_examples=request.min_examples,
    )


# --- token streams --------------------------------------------------------------------------


def _read_npy_tokens(handle: BinaryIO, request: ReadRequest) -> Dataset:
    try:
        stream = np.load(handle, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise _pickled(request, "np.save(path, token_ids) with an integer array") from None
        raise _invalid(request, f"is not a readable .npy ({exc})") from None
    except (OSError, EOFError) as exc:
        raise _invalid(request, f"is not a readable .npy ({type(exc).__name__})") from None
    if not isinstance(stream, np.ndarray) or stream.ndim != 1 or stream.dtype.kind not in "iu":
        shape = getattr(stream, "shape", "?")
        dtype = getattr(stream, "dtype", type(stream).__name__)
        raise _invalid(
            request,
            f"holds an array of shape {shape} and dtype {dtype}; a token stream is a 1-D integer "
            "array (use .npz with x and y for features and targets)",
        )
    return _token_dataset(stream, request)


def _read_bin_tokens(handle: BinaryIO, request: ReadRequest) -> Dataset:
    dtype_name = request.options.choice("dtype", ("uint16", "uint32"), "uint16")
    dtype = np.dtype(dtype_name).newbyteorder("<")
    data = handle.read(request.max_bytes + 1)
    if len(data) > request.max_bytes:
        raise IntakeError(
            "data_too_large",
            f"{request.name} is larger than this deployment's limit of {request.max_bytes} "
            "bytes; send a smaller sample.",
        )
    if len(data) % dtype.itemsize:
        raise _invalid(
            request,
            f"has {len(data)} bytes, not a whole number of {dtype_name} token ids; check dtype",
        )
    return _token_dataset(np.frombuffer(data, dtype=dtype), request)


def _token_dataset(stream: np.ndarray, request: ReadRequest) -> Dataset:
    block_size = _block_size(request)
    vocab = _num_classes(request, "vocab_size")
    if stream.size:
        low, high = int(stream.min()), int(stream.max())
        if low < 0:
            raise _invalid(request, f"has a negative token id ({low})")
        if vocab is not None and high >= vocab:
            raise _invalid(
                request,
                f"has token id {high}, outside the declared vocab_size {vocab}; fix the data "
                "or vocab_size",
            )
        if high >= 2**31:
            raise _invalid(request, "has token ids of 2**31 or more")
        vocab = vocab if vocab is not None else high + 1
    windows = (stream.size - 1) // block_size if stream.size else 0
    if windows < request.min_examples:
        raise IntakeError(
            "too_few_examples",
            f"{request.name} has {stream.size} tokens, {max(windows, 0)} windows of "
            f"block_size {block_size} + 1, fewer than the {request.min_examples} a probe needs; "
            "send more tokens or use a smaller block size.",
        )
    tokens = torch.from_numpy(stream.astype(np.int32 if stream.dtype.itemsize <= 4 else np.int64))
    used = windows * block_size
    x = tokens[:used].view(windows, block_size)
    y = tokens[1 : used + 1].view(windows, block_size)
    return build_dataset(
        request.name,
        "tokens",
        x,
        y,
        num_classes=vocab,
        block_size=block_size,
        min_examples=request.min_examples,
    )


def _block_size(request: ReadRequest) -> int:
    option = request.options.optional_integer("block_size", 1, MAX_BLOCK_SIZE)
    given = request.block_size
    if given is not None and not 1 <= given <= MAX_BLOCK_SIZE:
        raise IntakeError(
            "invalid_data_ref", f"block_size must be an integer in [1, {MAX_BLOCK_SIZE}]."
        )
    if option is not None and given is not None and option != given:
        raise IntakeError(
            "invalid_data_ref",
            f"{request.name}: the reference says block_size={option} but the job asks for "
            f"{given}; give one block size.",
        )
    size = option if option is not None else given
    if size is None:
        raise IntakeError(
            "block_size_required",
            f"{request.name} is a token stream and needs a block size (the context length the "
            "model was trained with); add block_size=N to the job or the data reference.",
        )
    return size


# --- shared ---------------------------------------------------------------------------------


def _invalid(request: ReadRequest, problem: str) -> IntakeError:
    return IntakeError("invalid_data", f"{request.name} {problem}.")


def _pickled(request: ReadRequest, instead: str) -> IntakeError:
    return IntakeError(
        "pickled_data_refused",
        f"{request.name} holds pickled Python objects, which lrprobe never loads; save the data "
        f"with {instead}.",
    )


_READERS: dict[str, Callable[[BinaryIO, ReadRequest], Dataset]] = {
    "npz": _read_npz,
    "pt": _read_pt,
    "csv": _read_csv,
    "parquet": _read_parquet,
    "npy": _read_npy_tokens,
    "bin": _read_bin_tokens,
}
