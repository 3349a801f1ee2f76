"""Errors of the numeric core, each with a stable code the service can store and show."""

from __future__ import annotations


class NumericalError(ValueError):
    """The loss or its derivatives are not finite, so no learning rate can be derived."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class OutOfMemoryProbeError(MemoryError):
    """The probe does not fit in memory even one example at a time."""

    code = "out_of_memory"


class LossInputError(ValueError):
    """The model's output does not fit the loss's targets (its shape, its type)."""

    code = "incompatible_model_output"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
