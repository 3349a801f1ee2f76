"""The Lightning callback in a real Lightning run on a tiny CPU model: rates applied to the
optimizer Lightning built and logged to its loggers; a second recommendation from the embedded
service mid-run; a service that is down does not stop training."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers.logger import Logger
from torch.utils.data import DataLoader, TensorDataset

from lrprobe.client import Client
from lrprobe.integrations import LocalProbe, ServiceProbe
from lrprobe.integrations.lightning import LrprobeCallback
from tests.e2e.test_sdk_training import service  # noqa: F401  (the embedded-service fixture)
from tests.integrations.support import (
    ARCH_CONFIG,
    DATA,
    FAST_PROBE,
    check_rates,
    decay_groups,
    digits,
    endless,
    loss_fn,
    mlp,
    warmup,
)  # fmt: skip

# Lightning's advice about worker processes and logging intervals, and its use of a torch
# pytree class that torch 2.13 deprecates, are not under test.
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
]


class Digits(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()

    def training_step(self, batch, batch_idx):
        return loss_fn(self.net, batch)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(decay_groups(self.net), lr=1e-3)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": warmup(optimizer), "interval": "step"}}  # fmt: skip


class Collected(Logger):
    """A logger that keeps what it is given (what TensorBoard or MLflow would receive)."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[dict, int]] = []

    name = "collected"
    version = 0

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append((dict(metrics), step))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def _trainer(callbacks, max_steps: int, logger) -> Trainer:
    return Trainer(
        max_steps=max_steps, callbacks=callbacks, logger=logger, accelerator="cpu", devices=1,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip


def _loader() -> DataLoader:
    x, y = digits()
    return DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)


def test_the_callback_sets_the_rates_lightning_trains_with_and_logs_them() -> None:
    module, logger = Digits(), Collected()
    callback = LrprobeCallback(LocalProbe(loss_fn, endless(), **FAST_PROBE), module="net",
                               milestones=[4])  # fmt: skip
    trainer = _trainer([callback], max_steps=6, logger=logger)
    trainer.fit(module, _loader())
    events = callback.history.events
    assert [(e.step, e.probed_at) for e in events] == [(0, 0), (4, 4)]
    optimizer = trainer.optimizers[0]
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    check_rates(optimizer, module.net, events[1].lrs, scheduler)
    assert len(optimizer.param_groups) == 4  # 2 layers × (weights with decay, biases without)
    logged = [(m, s) for m, s in logger.metrics if any(k.startswith("lrprobe/") for k in m)]
    assert [s for _, s in logged] == [0, 4]
    assert logged[1][0] == {f"lrprobe/lr/{g}": lr for g, lr in events[1].lrs.items()}


class StopAfterSecondRecommendation(LrprobeCallback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if len(self.history.events) >= 2 or self.history.failures:
            trainer.should_stop = True


def test_reprobing_through_the_embedded_service_applies_a_second_recommendation_mid_run(
    service: Client,  # noqa: F811
) -> None:
    module = Digits()
    prober = ServiceProbe(service, data=DATA, arch="mlp", arch_config=ARCH_CONFIG,
                          budget={"batches": 8, "batch_size": 64}, run="lightning")  # fmt: skip
    callback = StopAfterSecondRecommendation(prober, module="net", every=5)
    trainer = _trainer([callback], max_steps=20_000, logger=Collected())
    trainer.fit(module, _loader())
    # A probe launched at the boundary that applied the second recommendation is cancelled
    # when training ends; wait for it, or the embedded service would shut down under it.
    assert callback.reprobe is not None
    callback.reprobe.wait(120)
    assert not callback.reprobe.probing
    assert callback.history.failures == []
    first, second = callback.history.events
    assert (first.step, second.probed_at) == (0, 5)
    assert second.step > second.probed_at  # training went on while the service probed
    check_rates(trainer.optimizers[0], module.net, second.lrs,
                trainer.lr_scheduler_configs[0].scheduler)  # fmt: skip


def test_a_service_that_is_down_does_not_stop_lightning_training() -> None:
    module = Digits()
    with Client("http://127.0.0.1:9", api_key="lrp_down", retries=0) as down:
        prober = ServiceProbe(down, data=DATA, arch="mlp", arch_config=ARCH_CONFIG)
        callback = LrprobeCallback(prober, module="net", every=2)
        trainer = _trainer([callback], max_steps=6, logger=Collected())
        trainer.fit(module, _loader())
    assert trainer.global_step == 6 and callback.history.events == []
    assert callback.history.failures and callback.history.failures[0][0] == 0
