"""The one exception type of the intake, with a stable code the service and CLI can show."""

from __future__ import annotations


class IntakeError(Exception):
    """A checkpoint or data reference that cannot be used.

    ``code`` is stable (API clients and the SDK branch on it); ``detail`` is one sentence that
    says what went wrong *and what to send instead*.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail

    @property
    def message(self) -> str:
        """Deprecated: the same sentence as :attr:`detail`, the name every lrprobe error uses."""
        return self.detail

    def __str__(self) -> str:
        return f"{self.detail} [{self.code}]"
