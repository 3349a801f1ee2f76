"""The probe spec as the worker reads it from ``jobs.spec``.

The API validated the spec with ``lrprobe.client.schemas.JobCreate`` before it stored it; the worker
parses the stored JSON again (a row may come from an older API version), with that model when
it exists and otherwise with the mirror below, which accepts the same fields with the same
defaults.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class OptimizerGroupIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    params: list[str] = Field(min_length=1)
    momentum: float | None = Field(None, ge=0.0, lt=1.0)
    dampening: float | None = Field(None, ge=0.0, le=1.0)
    nesterov: bool | None = None
    betas: tuple[float, float] | None = None
    eps: float | None = Field(None, gt=0.0)
    weight_decay: float | None = Field(None, ge=0.0)
    options: dict[str, float | bool] = Field(default_factory=dict)


class OptimizerSpecIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: Literal[
        "sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad", "nadam", "radam", "lion"
    ] = "sgd"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    dampening: float = Field(0.0, ge=0.0, le=1.0)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    options: dict[str, float | bool] = Field(default_factory=dict)
    param_groups: list[OptimizerGroupIn] = Field(default_factory=list)


class PartitionSpecIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    rule: str | dict[str, str] = "layer"
    max_groups: int | None = Field(None, ge=1)


class BudgetIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    batches: int = Field(40, ge=1)
    batch_size: int = Field(128, ge=1)
    heldout_batches: int = Field(4, ge=1)
    time_limit_s: float | None = Field(None, gt=0.0)


class JobSpecMirror(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model_id: str
    data: str
    loss: Literal["cross_entropy", "mse", "bce", "lm_cross_entropy"] = "cross_entropy"
    optimizer: OptimizerSpecIn = Field(default_factory=OptimizerSpecIn)
    partition: PartitionSpecIn = Field(default_factory=PartitionSpecIn)
    budget: BudgetIn = Field(default_factory=BudgetIn)
    block_size: int | None = Field(None, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    label: str | None = None
    run: str | None = None
    run_step: int | None = None


class SpecError(ValueError):
    """The stored spec does not validate (a row written by an incompatible API version)."""


def parse_spec(data: dict[str, Any]) -> Any:
    """The validated spec; raises :class:`SpecError` with pydantic's message."""
    try:
        from lrprobe.client.schemas import JobCreate as model  # noqa: N813
    except ImportError:
        model = JobSpecMirror
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecError(str(exc)) from None
