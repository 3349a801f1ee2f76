"""A Lightning callback: per-layer rates for the optimizer Lightning built, re-probed while
training goes on, logged to the trainer's own loggers (TensorBoard, MLflow, W&B, CSV …)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from lrprobe.integrations._modules import submodule
from lrprobe.integrations._probers import Prober
from lrprobe.integrations._reprobe import RateHistory, Reprobe


class LrprobeCallback(Callback):
    """Probe when training starts and apply the per-layer rates to the trainer's first
    optimizer; then re-probe every ``every`` steps and at ``milestones`` (see
    :class:`~lrprobe.integrations.Reprobe`). ``module`` is the attribute path of the network
    the prober knows (``"net"`` for ``self.net``; default: the LightningModule itself). The
    rates are logged as ``lrprobe/lr/<group>`` to every logger of the trainer."""

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

    @property
    def history(self) -> RateHistory:
        return self.reprobe.history if self.reprobe is not None else RateHistory()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        def log(metrics: dict[str, float], step: int) -> None:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

        self.reprobe = Reprobe(
            self.prober, submodule(pl_module, self.module), trainer.optimizers[0],
            every=self.every, milestones=self.milestones,
            schedulers=[config.scheduler for config in trainer.lr_scheduler_configs],
            probe_first=self.probe_first, log=log,
        )  # fmt: skip
        self.reprobe.start(trainer.global_step)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.reprobe is not None:
            self.reprobe.boundary(trainer.global_step)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.reprobe is not None:
            self.reprobe.close()
