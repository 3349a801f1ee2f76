"""The one exception type of the intake, with a stable code the service and CLI can show."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from lrprobe.rules.errors import RuleError


class IntakeError(RuleError):
    """A checkpoint or data reference that cannot be used, found by the intake itself.

    The torch-free checks it shares with the service (``lrprobe.rules``) raise the parent,
    :class:`~lrprobe.rules.RuleError`; the intake's entry points (``load_checkpoint``,
    ``open_dataset``) turn those into this type with :func:`intake_errors`, so the worker, the
    CLI and the job's error see one type with the rule's code and sentence.
    """


P = ParamSpec("P")
R = TypeVar("R")


def intake_errors(function: Callable[P, R]) -> Callable[P, R]:
    """Make ``function`` raise the rulebook's refusals as ``IntakeError`` (same code and
    detail), so callers of the intake catch one type."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except IntakeError:
            raise
        except RuleError as refusal:
            raise IntakeError(refusal.code, refusal.detail) from None

    return wrapper
