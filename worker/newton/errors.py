"""Errors of the numeric core, each with a stable code the service can store and show."""

from __future__ import annotations


class NumericalError(ValueError):
    """The loss or its derivatives are not finite, so no learning rate can be derived."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class OutOfMemoryProbeError(MemoryError):
    """The probe does not fit in memory even one example at a time."""

    code = "out_of_memory"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class LossInputError(ValueError):
    """The model's output does not fit the loss's targets (its shape, its type)."""

    code = "incompatible_model_output"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
