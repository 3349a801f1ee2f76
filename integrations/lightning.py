"""A Lightning callback: per-layer rates for the optimizer Lightning built, re-probed while
training goes on, logged to the trainer's own loggers (TensorBoard, MLflow, W&B, CSV …)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from lrprobe.integrations._callbacks import ReprobingCallback


class LrprobeCallback(ReprobingCallback, Callback):
    """Probe when training starts and apply the per-layer rates to the trainer's first
    optimizer; then re-probe every ``every`` steps and at ``milestones``
    (:class:`~lrprobe.integrations.ReprobeOptions`: pass one, or a prober and its keywords).
    ``module`` is the attribute path of the network the prober knows (``"net"`` for
    ``self.net``; default: the LightningModule itself). The rates are logged as
    ``lrprobe/lr/<group>`` to every logger of the trainer."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        def log(metrics: dict[str, float], step: int) -> None:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

        schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        self.start_reprobe(pl_module, trainer.optimizers[0], schedulers, log, trainer.global_step)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.step_boundary(trainer.global_step)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.end_reprobe()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self.end_reprobe()  # training stopped all the same: cancel a probe still running
