"""The Hugging Face TrainerCallback in a real Trainer run on a tiny CPU model: per-layer rates
in the optimizer and schedule the Trainer built, logged through Trainer.log; a service that is
down does not stop training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from lrprobe.client import Client
from lrprobe.integrations import LocalProbe, ServiceProbe
from lrprobe.integrations.huggingface import LrprobeTrainerCallback
from tests.e2e.test_sdk_training import service  # noqa: F401  (the embedded-service fixture)
from tests.integrations.support import (
    ARCH_CONFIG,
    DATA,
    FAST_PROBE,
    digits,
    endless,
    loss_fn,
    mlp,
)  # fmt: skip

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Classifier(nn.Module):
    """What the Trainer expects of a model: keyword inputs, a dict with the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()

    def forward(self, x, labels=None):
        logits = self.net(x)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


class Rows(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.x, self.y = digits()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "labels": self.y[i]}


def _trainer(model: nn.Module, tmp_path: Path, max_steps: int) -> Trainer:
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=64,
        learning_rate=1e-3, weight_decay=0.05, warmup_steps=4, logging_steps=1,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    return Trainer(model=model, args=args, train_dataset=Rows())


def test_the_callback_sets_the_rates_the_trainer_trains_with_and_logs_them(tmp_path) -> None:
    model = Classifier()
    trainer = _trainer(model, tmp_path, max_steps=6)
    callback = LrprobeTrainerCallback(
        LocalProbe(loss_fn, endless(), **FAST_PROBE), module="net", milestones=[3]
    ).attach(trainer)
    trainer.train()
    events = callback.history.events
    assert [(e.step, e.probed_at) for e in events] == [(0, 0), (3, 3)]
    names = {id(p): n for n, p in model.net.named_parameters()}
    optimizer = trainer.optimizer.optimizer  # accelerate's wrapper around torch's AdamW
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert group["initial_lr"] == events[1].lrs[names[id(p)].rsplit(".", 1)[0]]
            # the Trainer's own decay/no-decay split is kept
            assert group["weight_decay"] == (0.05 if p.dim() >= 2 else 0.0)
    assert trainer.lr_scheduler.base_lrs == [g["initial_lr"] for g in optimizer.param_groups]
    logged = [entry for entry in trainer.state.log_history if any("lrprobe/" in k for k in entry)]
    assert [entry["step"] for entry in logged] == [0, 3]


def test_a_service_that_is_down_does_not_stop_the_trainer(tmp_path) -> None:
    model = Classifier()
    trainer = _trainer(model, tmp_path, max_steps=4)
    with Client("http://127.0.0.1:9", api_key="lrp_down", retries=0) as down:
        prober = ServiceProbe(down, data=DATA, arch="mlp", arch_config=ARCH_CONFIG)
        callback = LrprobeTrainerCallback(prober, module="net", every=2).attach(trainer)
        trainer.train()
    assert trainer.state.global_step == 4 and callback.history.events == []
    assert callback.history.failures[0][0] == 0


class StopAfterSecondRecommendation(LrprobeTrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if len(self.history.events) >= 2 or self.history.failures:
            control.should_training_stop = True
        return control


def test_reprobing_through_the_embedded_service_changes_the_trainers_rates_mid_run(
    service: Client,  # noqa: F811
    tmp_path,
) -> None:
    model = Classifier()
    trainer = _trainer(model, tmp_path, max_steps=20_000)
    prober = ServiceProbe(service, data=DATA, arch="mlp", arch_config=ARCH_CONFIG,
                          budget={"batches": 8, "batch_size": 64}, run="hf")  # fmt: skip
    callback = StopAfterSecondRecommendation(prober, module="net", every=5).attach(trainer)
    trainer.train()
    # As with Lightning: a probe launched at the last boundary is cancelled; let it stop
    # before the embedded service does.
    assert callback.reprobe is not None
    callback.reprobe.wait(120)
    assert not callback.reprobe.probing
    assert callback.history.failures == []
    first, second = callback.history.events
    assert (first.step, second.probed_at) == (0, 5)
    assert second.step > second.probed_at  # the Trainer went on while the service probed
    names = {id(p): n for n, p in model.net.named_parameters()}
    for group in trainer.optimizer.optimizer.param_groups:
        for p in group["params"]:
            assert group["initial_lr"] == second.lrs[names[id(p)].rsplit(".", 1)[0]]
