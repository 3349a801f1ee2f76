"""A Hugging Face ``TrainerCallback``: per-layer rates for the optimizer the Trainer built,
re-probed while training goes on, logged through ``Trainer.log`` (so every ``report_to``
integration records them)."""

from __future__ import annotations

from typing import Any

from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from lrprobe.integrations._callbacks import ReprobeOptions, ReprobingCallback
from lrprobe.integrations._probers import Prober


class LrprobeTrainerCallback(ReprobingCallback, TrainerCallback):
    """Probe when training begins and apply the per-layer rates to the Trainer's optimizer and
    learning-rate schedule; then re-probe every ``every`` steps and at ``milestones``
    (:class:`~lrprobe.integrations.ReprobeOptions`: pass one, or a prober and its keywords).
    ``module`` is the attribute path of the network the prober knows (default: the model
    itself).

    Add it with :meth:`attach` (``LrprobeTrainerCallback(...).attach(trainer)``): the rates are
    then logged with ``trainer.log`` as ``lrprobe/lr/<group>``, which reaches every reporting
    integration. Passed as ``callbacks=[...]`` instead, it works the same but logs nothing.
    """

    def __init__(self, prober: Prober | ReprobeOptions, **options: Any) -> None:
        super().__init__(prober, **options)
        self._trainer: Trainer | None = None

    def attach(self, trainer: Trainer) -> LrprobeTrainerCallback:
        trainer.add_callback(self)
        self._trainer = trainer
        return self

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
        schedulers = [lr_scheduler] if lr_scheduler is not None else []
        self.start_reprobe(model, optimizer, schedulers, self._log, state.global_step)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.step_boundary(state.global_step)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.end_reprobe()

    def _log(self, metrics: dict[str, float], step: int) -> None:
        if self._trainer is not None:
            self._trainer.log(dict(metrics))
