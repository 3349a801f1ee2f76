"""The one exception type of the intake, with a stable code the service and CLI can show."""

from __future__ import annotations


class IntakeError(Exception):
    """A checkpoint or data reference that cannot be used.

    ``code`` is stable (API clients and the SDK branch on it); ``message`` is one sentence that
    says what went wrong *and what to send instead*.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"
