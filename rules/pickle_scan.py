"""The opcode scan of a ``torch.save`` pickle: which globals it imports, read without
unpickling it.

A global import is the only way a pickle reaches code, so a pickle whose globals are all
tensor-rebuilding functions, storages and dtypes cannot run any. The service scans an uploaded
``.pt`` with this; the worker then loads it with ``torch.load(weights_only=True)`` as well.
"""

from __future__ import annotations

import pickletools
import zipfile
from typing import cast

from lrprobe.rules.checkpoint_formats import pickle_refused

MAX_PICKLE_BYTES = 64 << 20

# What a state dict's pickle may reference: tensor rebuilding, storages, containers, dtypes.
_ALLOWED_GLOBALS = frozenset(
    {
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_tensor_v3"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"),
        ("torch.serialization", "_get_layout"),
        ("torch", "Size"),
        ("torch", "device"),
    }
)
_TORCH_STORAGES = frozenset(
    f"{kind}Storage"
    for kind in (
        "Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
        "ComplexFloat", "ComplexDouble", "Untyped",
    )
)  # fmt: skip
_TORCH_DTYPES = frozenset(
    {"float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
     "bool", "complex64", "complex128", "float8_e4m3fn", "float8_e5m2"}
)  # fmt: skip


def scan_state_dict_pickle(zf: zipfile.ZipFile, name: str) -> None:
    """Refuse a torch.save pickle that references anything but tensors and containers.

    The opcodes are listed, never executed: a global import is the only way a pickle reaches
    code, so a pickle whose globals are all tensor-rebuilding functions cannot run any."""
    info = zf.getinfo(name)
    if info.file_size > MAX_PICKLE_BYTES:
        raise pickle_refused("The torch.save file's pickle is unusually large")
    data = zf.read(name)
    for module, attr in pickle_globals(data):
        if (module, attr) in _ALLOWED_GLOBALS:
            continue
        if module == "torch" and (attr in _TORCH_STORAGES or attr in _TORCH_DTYPES):
            continue
        raise pickle_refused(
            f"The file holds pickled objects other than tensors (it references {module}.{attr}; "
            "for example a whole module saved with torch.save(model))"
        )


def pickle_globals(data: bytes) -> list[tuple[str, str]]:
    """The (module, name) of every global a pickle imports, without unpickling it.

    ``STACK_GLOBAL`` takes its names from the stack, so pushes are followed just far enough to
    know them: strings pushed directly or fetched from the memo; anything else there (a name
    built at load time) is reported as unknown, which the caller refuses."""
    found: list[tuple[str, str]] = []
    recent: list[str | None] = []  # the last pushed values, None when not a known string
    memo: dict[int, str | None] = {}
    try:
        for opcode, arg, _pos in pickletools.genops(data):
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                found.append((module, attr))
                recent.append(None)
            elif name == "STACK_GLOBAL":
                pair = recent[-2:]
                if len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], str):
                    found.append((pair[0], pair[1]))
                else:
                    found.append(("<unknown>", "<unknown>"))
                recent.append(None)
            elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                recent.append(str(arg))
            elif name == "MEMOIZE":
                memo[len(memo)] = recent[-1] if recent else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(cast(int, arg))] = recent[-1] if recent else None
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                recent.append(memo.get(int(cast(int, arg))))
            elif name in ("EXT1", "EXT2", "EXT4"):
                found.append(("copyreg", "extension"))
                recent.append(None)
            else:
                recent.append(None)
            del recent[:-2]
    except Exception:  # a malformed stream: refuse, never guess
        raise pickle_refused("The torch.save file's pickle is malformed") from None
    return found
