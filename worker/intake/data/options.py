"""The ``key=value`` options of a data reference (``?target=label``, ``#block_size=256``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from lrprobe.worker.intake.errors import IntakeError


def parse_options(*texts: str) -> dict[str, str]:
    """Merge ``key=value&...`` strings; a key given twice is an error."""
    options: dict[str, str] = {}
    for text in texts:
        if not text:
            continue
        try:
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise IntakeError(
                "invalid_data_ref",
                f"The data reference options {text!r} are not key=value pairs joined by '&'.",
            ) from None
        for key, value in pairs:
            if key in options:
                raise IntakeError(
                    "invalid_data_ref", f"The data reference gives the option {key!r} twice."
                )
            options[key] = value
    return options


@dataclass(frozen=True)
class DataOptions:
    """Options of one reference, read through typed getters that refuse bad values."""

    source: str
    values: dict[str, str] = field(default_factory=dict)

    def check_keys(self, allowed: Iterable[str]) -> None:
        allowed = set(allowed)
        for key in self.values:
            if key not in allowed:
                known = ", ".join(sorted(allowed)) or "none"
                raise IntakeError(
                    "invalid_data_ref",
                    f"{self.source} takes no option {key!r}; its options are: {known}.",
                )

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.values.get(key, default)
        if value not in choices:
            raise IntakeError(
                "invalid_data_ref",
                f"{self.source}: {key}={value!r} is not one of {', '.join(choices)}.",
            )
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.optional_integer(key, low, high)
        return default if value is None else value

    def optional_integer(self, key: str, low: int, high: int) -> int | None:
        text = self.values.get(key)
        if text is None:
            return None
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise IntakeError(
                "invalid_data_ref",
                f"{self.source}: the option {key}={text!r} must be an integer in [{low}, {high}].",
            )
        return value
