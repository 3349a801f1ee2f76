"""What the framework callbacks (:mod:`lrprobe.integrations.lightning`,
:mod:`lrprobe.integrations.huggingface`) share: their options, and the :class:`Reprobe` they run
on the network inside the framework's module."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lrprobe.integrations._probers import Prober
from lrprobe.integrations._reprobe import LogFn, RateHistory, Reprobe


@dataclass(frozen=True)
class ReprobeOptions:
    """How a framework callback probes: with ``prober``, when training begins (unless
    ``probe_first`` is false), then every ``every`` steps and at ``milestones`` (see
    :class:`~lrprobe.integrations.Reprobe`). ``module`` is the attribute path of the network
    the prober knows (``"net"`` for ``self.net``; default: the framework's module itself)."""

    prober: Prober
    every: int | None = None
    milestones: Sequence[int] = ()
    module: str | None = None
    probe_first: bool = True


class ReprobingCallback:
    """The part of a framework callback that is not the framework's: takes a
    :class:`ReprobeOptions`, or a prober and the options' keywords, and drives one
    :class:`Reprobe` from the framework's hooks."""

    def __init__(self, prober: Prober | ReprobeOptions, **options: Any) -> None:
        if isinstance(prober, ReprobeOptions):
            if options:
                raise TypeError("pass either ReprobeOptions or keywords, not both")
            self.options = prober
        else:
            # The keywords are ReprobeOptions' own, so an unknown one fails there, by name.
            self.options = ReprobeOptions(prober, **options)
        self.reprobe: Reprobe | None = None

    @property
    def history(self) -> RateHistory:
        return self.reprobe.history if self.reprobe is not None else RateHistory()

    def start_reprobe(
        self,
        root: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedulers: Iterable[Any],
        log: LogFn,
        step: int,
    ) -> None:
        """Training begins at ``step``: probe ``root``'s network (with ``probe_first``)."""
        options = self.options
        self.reprobe = Reprobe(
            options.prober, submodule(root, options.module), optimizer,
            every=options.every, milestones=options.milestones, schedulers=schedulers,
            probe_first=options.probe_first, log=log,
        )  # fmt: skip
        self.reprobe.start(step)

    def step_boundary(self, step: int) -> None:
        if self.reprobe is not None:
            self.reprobe.boundary(step)

    def end_reprobe(self) -> None:
        if self.reprobe is not None:
            self.reprobe.close()


def submodule(root: nn.Module, path: str | None) -> nn.Module:
    """``root`` or its submodule at the dotted attribute ``path`` (``"net"``, ``"model.body"``)."""
    module = root.get_submodule(path) if path else root
    if not isinstance(module, nn.Module):
        raise TypeError(f"{path!r} is not a torch.nn.Module of {type(root).__name__}")
    return module
