"""The architecture registry: built-in plain-torch models plus operator-installed entry points."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError
from torch import nn

from lrprobe.worker.intake.errors import IntakeError

ENTRY_POINT_GROUP = "lrprobe.architectures"
"""Deployments add architectures by exposing an `ArchitectureSpec` object under this group."""

ConfigT = TypeVar("ConfigT", bound=BaseModel)


@dataclass(frozen=True)
class ArchitectureSpec(Generic[ConfigT]):
    """A named architecture: its typed config and the function that builds the module.

    ``factory`` receives an already validated config. Use :meth:`build` from outside, which
    accepts a config object, a JSON-like mapping or ``None`` (all defaults).
    """

    name: str
    config_model: type[ConfigT]
    factory: Callable[[ConfigT], nn.Module] = field(repr=False)
    description: str = ""

    def validate_config(self, config: ConfigT | Mapping[str, Any] | None = None) -> ConfigT:
        """Return ``config`` as a validated config object.

        Raises:
            IntakeError: ``invalid_arch_config``, naming the offending fields.
        """
        if isinstance(config, self.config_model):
            return config
        if config is None:
            config = {}
        if not isinstance(config, Mapping):
            raise IntakeError(
                "invalid_arch_config",
                f"The config for architecture '{self.name}' must be a JSON object, got "
                f"{type(config).__name__}; send an object with fields of "
                f"{self.config_model.__name__} ({_field_names(self.config_model)}).",
            )
        try:
            return self.config_model.model_validate(dict(config))
        except ValidationError as exc:
            raise IntakeError(
                "invalid_arch_config",
                f"The config for architecture '{self.name}' is invalid: "
                f"{_describe_errors(exc)}; send fields of {self.config_model.__name__} "
                f"({_field_names(self.config_model)}) with valid values.",
            ) from None

    def build(self, config: ConfigT | Mapping[str, Any] | None = None) -> nn.Module:
        """Build a freshly initialised module from ``config`` (defaults when ``None``)."""
        return self.factory(self.validate_config(config))


def _field_names(model: type[BaseModel]) -> str:
    return ", ".join(model.model_fields)


def _describe_errors(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "(config)"
        parts.append(f"field '{loc}': {err['msg']}")
    more = len(exc.errors()) - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def _builtin_specs() -> dict[str, ArchitectureSpec[Any]]:
    from lrprobe.worker.intake.checkpoints.architectures.cnn import CNN_SPEC
    from lrprobe.worker.intake.checkpoints.architectures.gpt import GPT_SPEC
    from lrprobe.worker.intake.checkpoints.architectures.mlp import MLP_SPEC
    from lrprobe.worker.intake.checkpoints.architectures.resnet import RESNET_SPEC

    return {spec.name: spec for spec in (MLP_SPEC, CNN_SPEC, RESNET_SPEC, GPT_SPEC)}


@functools.cache
def _registry() -> dict[str, ArchitectureSpec[Any]]:
    # Entry points are the operator's code, installed with the deployment: a broken one is a
    # deployment error and fails loudly here instead of silently shrinking the registry.
    specs = _builtin_specs()
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = entry_point.load()
        except Exception as exc:
            raise RuntimeError(
                f"architecture entry point {entry_point.name!r} ({entry_point.value}) "
                f"failed to load: {exc}"
            ) from exc
        if not isinstance(spec, ArchitectureSpec):
            raise TypeError(
                f"architecture entry point {entry_point.name!r} ({entry_point.value}) resolved "
                f"to {type(spec).__name__}, not an ArchitectureSpec"
            )
        if spec.name != entry_point.name:
            raise ValueError(
                f"architecture entry point {entry_point.name!r} holds a spec named "
                f"{spec.name!r}; the two names must match"
            )
        if spec.name in specs:
            raise ValueError(
                f"architecture entry point {entry_point.name!r} collides with an existing "
                "architecture of the same name"
            )
        specs[spec.name] = spec
    return specs


def refresh_architectures() -> None:
    """Forget the discovered entry points, so the next lookup scans them again."""
    _registry.cache_clear()


def list_architectures() -> list[ArchitectureSpec[Any]]:
    """All known architectures, built-in and from entry points, sorted by name."""
    return [spec for _, spec in sorted(_registry().items())]


def get_architecture(name: str) -> ArchitectureSpec[Any]:
    """The architecture called ``name``.

    Raises:
        IntakeError: ``unknown_architecture``, listing the known names.
    """
    specs = _registry()
    spec = specs.get(name)
    if spec is None:
        raise IntakeError(
            "unknown_architecture",
            f"There is no architecture called {name!r}; send one of: {', '.join(sorted(specs))}.",
        )
    return spec
