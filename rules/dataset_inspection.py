"""Upload-time sniffing of a dataset file: what it is, from its content (and, for text and
token streams, its name), never run.

``.npz`` (zip of ``.npy``), ``.npy``, ``.pt`` (zip ``torch.save``, its pickle scanned opcode by
opcode), Parquet, CSV (UTF-8 text with a header line) and ``.bin`` token streams. Object arrays
are refused: their data is a pickle.
"""

from __future__ import annotations

import ast
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lrprobe.rules.archives import list_zip_members
from lrprobe.rules.checkpoint_formats import looks_like_pickle, looks_like_zip, pickle_refused
from lrprobe.rules.checkpoint_inspection import PARSER_ERRORS
from lrprobe.rules.errors import RuleError
from lrprobe.rules.pickle_scan import scan_state_dict_pickle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetInfo:
    format: str


DATASET_FORMATS = ("npz", "npy", "pt", "csv", "parquet", "bin")


def inspect_dataset(path: Path, filename: str) -> DatasetInfo:
    """Classify an uploaded dataset from its content (and, for text and token streams, its
    name); raise a ``RuleError``: ``unsupported_data_format``, ``pickle_refused``,
    ``unsafe_archive`` or ``empty_upload``."""
    try:
        return _inspect_dataset(path, filename)
    except RuleError:
        raise
    except PARSER_ERRORS as exc:
        log.info("dataset refused by a parser error: %r", exc)
        raise _unsupported_data(
            f"The file could not be read ({type(exc).__name__}: it is corrupt or truncated)"
        ) from None


def _inspect_dataset(path: Path, filename: str) -> DatasetInfo:
    size = path.stat().st_size
    if size == 0:
        raise RuleError("empty_upload", "The uploaded file is empty; send the dataset file.")
    suffix = PurePosixPath(filename.lower()).suffix
    with path.open("rb") as f:
        head = f.read(65536)
        f.seek(max(0, size - 4))
        tail = f.read(4)
    if head.startswith(b"\x93NUMPY"):
        _check_npy_header(head)
        return DatasetInfo("npy")
    if head.startswith(b"PAR1") and tail == b"PAR1":
        return DatasetInfo("parquet")
    if looks_like_zip(head):
        with zipfile.ZipFile(path) as zf:
            names = [member.raw_name for member in list_zip_members(zf, size, None)]
            pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
            if pickles:
                scan_state_dict_pickle(zf, pickles[0])
                return DatasetInfo("pt")
            if names and all(n.endswith(".npy") for n in names):
                for name in names:
                    with zf.open(name) as member:
                        _check_npy_header(member.read(65536))
                return DatasetInfo("npz")
        raise _unsupported_data("The zip archive is neither an .npz nor a torch.save file")
    if looks_like_pickle(head):
        raise pickle_refused("The file is a raw pickle stream")
    if suffix == ".bin":
        return DatasetInfo("bin")
    if suffix in (".csv", ".tsv", ".txt") or _looks_like_csv(head):
        if not _looks_like_csv(head):
            raise _unsupported_data("The file is not UTF-8 text with a header line")
        return DatasetInfo("csv")
    raise _unsupported_data("The file is not a dataset format lrprobe reads")


def _check_npy_header(head: bytes) -> None:
    """Refuse object arrays (their data is a pickle) from the ``.npy`` header, a Python dict
    literal read with ``ast.literal_eval`` (never evaluated as code)."""
    if not head.startswith(b"\x93NUMPY") or len(head) < 10:
        raise _unsupported_data("The .npy array header is truncated")
    major = head[6]
    width = 2 if major == 1 else 4
    length = int.from_bytes(head[8 : 8 + width], "little")
    raw = head[8 + width : 8 + width + length]
    try:
        header = ast.literal_eval(raw.decode("latin-1"))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise _unsupported_data("The .npy array header is malformed") from None
    descr = header.get("descr") if isinstance(header, dict) else None
    if descr is None or "O" in str(descr):
        raise pickle_refused("The array holds Python objects (its data is a pickle)")


def _looks_like_csv(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # The sniffed prefix may end inside a multi-byte character.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    first = text.split("\n", 1)[0]
    return bool(first.strip()) and "\x00" not in text and any(c in first for c in ",;\t")


def _unsupported_data(reason: str) -> RuleError:
    return RuleError(
        "unsupported_data_format",
        f"{reason}; send .npz or .pt tensors (x, y), Parquet or CSV (feature columns + "
        "target), or a token stream (.npy or .bin of token ids).",
    )
