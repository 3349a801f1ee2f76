"""The one error type of the rulebook."""

from __future__ import annotations


class RuleError(Exception):
    """A checkpoint, archive or data reference that a rule refuses.

    ``code`` is stable (the service's problem+json, the worker's job error and the SDK branch
    on it); ``message`` is one sentence that says what went wrong *and what to send instead*.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"
