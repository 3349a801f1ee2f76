"""The one error type of the rulebook."""

from __future__ import annotations


class RuleError(Exception):
    """A checkpoint, archive or data reference that a rule refuses.

    ``code`` is stable (the service's problem+json, the worker's job error and the SDK branch
    on it); ``detail`` is one sentence that says what went wrong *and what to send instead*
    (``detail``, as on every lrprobe error and in problem+json).
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
