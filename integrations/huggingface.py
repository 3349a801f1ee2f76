"""A Hugging Face ``TrainerCallback``: per-layer rates for the optimizer the Trainer built,
re-probed while training goes on, logged through ``Trainer.log`` (so every ``report_to``
integration records them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from lrprobe.integrations._modules import submodule
from lrprobe.integrations._probers import Prober
from lrprobe.integrations._reprobe import RateHistory, Reprobe


class LrprobeTrainerCallback(TrainerCallback):
    """Probe when training begins and apply the per-layer rates to the Trainer's optimizer and
    learning-rate schedule; then re-probe every ``every`` steps and at ``milestones`` (see
    :class:`~lrprobe.integrations.Reprobe`). ``module`` is the attribute path of the network
    the prober knows (default: the model itself).

    Add it with :meth:`attach` (``LrprobeTrainerCallback(...).attach(trainer)``): the rates are
    then logged with ``trainer.log`` as ``lrprobe/lr/<group>``, which reaches every reporting
    integration. Passed as ``callbacks=[...]`` instead, it works the same but logs nothing.
    """

    def __init__(
        self,
        prober: Prober,
        *,
        every: int | None = None,
        milestones: Sequence[int] = (),
        module: str | None = None,
        probe_first: bool = True,
    ) -> None:
        self.prober = prober
        self.every = every
        self.milestones = milestones
        self.module = module
        self.probe_first = probe_first
        self.reprobe: Reprobe | None = None
        self._trainer: Trainer | None = None

    def attach(self, trainer: Trainer) -> LrprobeTrainerCallback:
        trainer.add_callback(self)
        self._trainer = trainer
        return self

    @property
    def history(self) -> RateHistory:
        return self.reprobe.history if self.reprobe is not None else RateHistory()

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        **kwargs: Any,
    ) -> None:
        self.reprobe = Reprobe(
            self.prober, submodule(model, self.module), optimizer,
            every=self.every, milestones=self.milestones,
            schedulers=[lr_scheduler] if lr_scheduler is not None else [],
            probe_first=self.probe_first, log=self._log,
        )  # fmt: skip
        self.reprobe.start(state.global_step)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.reprobe is not None:
            self.reprobe.boundary(state.global_step)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.reprobe is not None:
            self.reprobe.close()

    def _log(self, metrics: dict[str, float], step: int) -> None:
        if self._trainer is not None:
            self._trainer.log(dict(metrics))
