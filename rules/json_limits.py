"""JSON from uploaded files and form fields, parsed with limits: a size cap, a nesting depth
cap (a deeply nested document would otherwise end in a RecursionError in whatever walks it)
and standard JSON only (``NaN`` and ``Infinity`` are refused: the database stores standard
JSON, and no configuration needs them)."""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 32


class JsonLimitError(ValueError):
    """The document is not JSON, or is over a limit; the message says which."""


def _no_constant(name: str) -> Any:
    raise JsonLimitError(f"it holds {name}, which standard JSON has no place for")


def depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), walked without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, level + 1)
        stack.extend((child, level + 1) for child in children)
    return deepest


def load_bounded(raw: bytes | str, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``raw``; raises ``JsonLimitError`` saying why it was refused."""
    if len(raw) > max_bytes:
        raise JsonLimitError(f"it is over {max_bytes} bytes")
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise JsonLimitError(f"it is nested deeper than {max_depth} levels") from None
    except JsonLimitError:
        raise
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise JsonLimitError(f"it is not valid JSON ({exc})") from None
    if depth(value) > max_depth:
        raise JsonLimitError(f"it is nested deeper than {max_depth} levels")
    return value
