"""The probe on batches larger than one pass holds: micro-batched steps and summaries give the
same recommendation, and the model is trained in place without a copy, then put back."""

from __future__ import annotations

import pytest
import torch

from lrprobe.worker.intake.checkpoints.architectures.gpt import GPT, GPTConfig
from lrprobe.worker.newton import losses, probe
from lrprobe.worker.newton.state import scratch


def gpt() -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8)
    return GPT(config).double()


def stream(batch: int = 12):  # type: ignore[no-untyped-def]
    generator = torch.Generator().manual_seed(0)
    while True:
        start = torch.randint(11, (batch, 1), generator=generator)
        seq = (start + torch.arange(7)) % 11
        noise = torch.rand(batch, 7, generator=generator) < 0.2
        seq = torch.where(noise, torch.randint(11, (batch, 7), generator=generator), seq)
        yield seq[:, :-1], seq[:, 1:]


@pytest.mark.parametrize("optimizer", ["adamw", "momentum"])
def test_a_micro_batched_probe_recommends_what_the_whole_batch_probe_does(optimizer: str) -> None:
    kwargs = {"steps": 8, "period": 2, "calibration_steps": 4, "partition": "kind"}

    whole = probe(gpt(), losses.lm_cross_entropy, stream(), optimizer, **kwargs)
    parts = probe(gpt(), losses.lm_cross_entropy, stream(), optimizer, micro_batch=5, **kwargs)

    assert parts.scale == whole.scale
    assert parts.trajectory_losses == pytest.approx(whole.trajectory_losses, rel=1e-10)
    for p, w in zip(parts.groups, whole.groups, strict=True):
        assert p.lr == pytest.approx(w.lr, rel=1e-8), p.name
        assert p.h == pytest.approx(w.h, rel=1e-8), p.name


def test_the_probe_leaves_the_models_tensors_and_grads_as_they_were() -> None:
    model = gpt()
    x, y = next(stream())
    losses.lm_cross_entropy(model, (x, y)).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    values = {n: p.detach().clone() for n, p in model.named_parameters()}
    storage = {n: p.data_ptr() for n, p in model.named_parameters()}

    probe(model, losses.lm_cross_entropy, stream(), "adamw", steps=4, period=2,
          calibration_steps=2, micro_batch=4)  # fmt: skip

    for name, p in model.named_parameters():
        assert torch.equal(p, values[name]), name
        assert p.grad is grads[name], name
        assert p.data_ptr() == storage[name], name


def test_scratch_puts_the_model_back_after_an_error() -> None:
    model = gpt()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    with pytest.raises(RuntimeError, match="stop"), scratch(model) as work:
        with torch.no_grad():
            for p in work.parameters():
                p.add_(1.0)
        raise RuntimeError("stop")

    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
