"""Micro-batched summaries equal the whole batch's, and running out of memory halves the
micro-batch before it fails with ``out_of_memory``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from lrprobe.worker.intake.checkpoints.architectures.gpt import GPT, GPTConfig
from lrprobe.worker.newton import losses, partition, summaries
from lrprobe.worker.newton.microbatches import batch_size, split
from tests.newton.cases import assert_scaled_close, build_model, ce_loss, gradient, make_batch


def gpt() -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8)
    return GPT(config).double()


def tokens(seed: int, batch: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(11, (batch, 7), generator=generator)
    return ids[:, :-1], ids[:, 1:]


@pytest.mark.parametrize("micro", [1, 3, 4, 9])
def test_micro_batched_summaries_equal_the_whole_batchs(micro: int) -> None:
    # 10 examples in micro-batches of 3 is 3 + 3 + 3 + 1: unequal parts are weighted by size.
    model = gpt()
    groups = partition(model, rule="kind")
    direction = gradient(model, losses.lm_cross_entropy, tokens(2))

    whole = summaries(model, losses.lm_cross_entropy, tokens(1), direction, groups)
    parts = summaries(
        model, losses.lm_cross_entropy, tokens(1), direction, groups, micro_batch=micro
    )

    assert_scaled_close(parts.g, whole.g, rel=1e-12, what="g")
    assert_scaled_close(parts.H, whole.H, rel=1e-12, what="H")
    assert_scaled_close(parts.d3, whole.d3, rel=1e-12, what="d3")
    assert parts.loss == pytest.approx(whole.loss, rel=1e-13)
    assert parts.micro_batch == micro and whole.micro_batch is None


def test_micro_batches_of_an_instance_norm_cnn_with_a_total_third_order() -> None:
    model = build_model("cnn_in")
    batch = make_batch("cnn_in", "ce", seed=1, batch_size=12)
    direction = gradient(model, ce_loss, make_batch("cnn_in", "ce", seed=2))
    groups = partition(model)

    whole = summaries(model, ce_loss, batch, direction, groups, total_third_order=True)
    parts = summaries(
        model, ce_loss, batch, direction, groups, total_third_order=True, micro_batch=5
    )

    assert_scaled_close(parts.H, whole.H, rel=1e-12, what="H")
    assert parts.d3_total == pytest.approx(whole.d3_total, rel=1e-12)


def test_split_keeps_every_example_once_with_its_share() -> None:
    x, y = torch.arange(10).reshape(10, 1), torch.arange(10)

    parts = split((x, y, {"mask": torch.ones(10)}, "tag"), 4)

    assert [float(w) for _, w in parts] == [0.4, 0.4, 0.2]
    assert torch.equal(torch.cat([p[0][0] for p in parts]), x)
    assert all(p[0][3] == "tag" and p[0][2]["mask"].shape[0] == p[0][1].shape[0] for p in parts)


def test_tensors_of_different_lengths_cannot_be_split() -> None:
    with pytest.raises(ValueError, match="leading sizes"):
        batch_size((torch.zeros(3, 2), torch.zeros(4)))


# Real allocation failures: a child process whose address space is capped a little above what
# it holds after warming up, so that the whole batch's double-backward graph does not fit.
_CHILD = textwrap.dedent(
    """
    import resource, sys, torch
    torch.set_num_threads(1)
    from lrprobe.worker.newton import partition, summaries
    from lrprobe.worker.newton.errors import OutOfMemoryProbeError
    torch.manual_seed(0)
    width = 1024
    model = torch.nn.Sequential(
        torch.nn.Linear(width, width), torch.nn.Tanh(), torch.nn.Linear(width, 10)
    )
    def loss_fn(m, b):
        return torch.nn.functional.cross_entropy(m(b[0]), b[1])
    def batch(n):
        g = torch.Generator().manual_seed(n)
        return torch.randn(n, width, generator=g), torch.randint(10, (n,), generator=g)
    groups = partition(model)
    u = {n: p.detach().clone() for n, p in model.named_parameters()}
    small = summaries(model, loss_fn, batch(8), u, groups, micro_batch=2)  # warm-up
    with open("/proc/self/status") as f:
        vm = next(int(l.split()[1]) for l in f if l.startswith("VmSize")) * 1024
    headroom = int(sys.argv[1]) << 20
    resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, vm + headroom))
    try:
        s = summaries(model, loss_fn, batch(int(sys.argv[2])), u, groups)
        print("fitted", s.micro_batch)
    except OutOfMemoryProbeError as exc:
        print("failed", exc.code, exc)
    """
)


def _run_capped(headroom_mib: int, examples: int) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(headroom_mib), str(examples)],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def test_running_out_of_memory_retries_at_half_the_micro_batch() -> None:
    # 4096 examples × 1024 activations × several float32 copies is far beyond 64 MiB; a few
    # hundred examples at a time fit.
    out = _run_capped(headroom_mib=64, examples=4096)

    assert out.startswith("fitted "), out
    fitted = int(out.split()[1])
    assert fitted < 4096 and 4096 % fitted == 0  # halved from the whole batch, exactly


def test_out_of_memory_even_one_example_at_a_time_fails_with_advice() -> None:
    out = _run_capped(headroom_mib=0, examples=64)

    assert out.startswith("failed out_of_memory"), out
    assert "device with more memory" in out


# The same on CUDA: the child caps the caching allocator at what it holds after warming up plus
# a little headroom (torch.cuda.set_per_process_memory_fraction), so the failures are CUDA's own
# OutOfMemoryError from the real allocator.
_CUDA_CHILD = textwrap.dedent(
    """
    import sys, torch
    from lrprobe.worker.newton import partition, summaries
    torch.manual_seed(0)
    width, n = 1024, int(sys.argv[2])
    model = torch.nn.Sequential(
        torch.nn.Linear(width, width), torch.nn.Tanh(), torch.nn.Linear(width, 10)
    ).cuda()
    def loss_fn(m, b):
        return torch.nn.functional.cross_entropy(m(b[0]), b[1])
    g = torch.Generator(device="cuda").manual_seed(1)
    batch = (torch.randn(n, width, device="cuda", generator=g),
             torch.randint(10, (n,), device="cuda", generator=g))
    groups = partition(model)
    u = {k: p.detach().clone() for k, p in model.named_parameters()}
    summaries(model, loss_fn, tuple(t[:8] for t in batch), u, groups)  # warm-up
    torch.cuda.synchronize()
    cap = torch.cuda.memory_reserved() + (int(sys.argv[1]) << 20)
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(cap / total)
    s = summaries(model, loss_fn, batch, u, groups)
    print("fitted", s.micro_batch, torch.cuda.max_memory_reserved() <= cap)
    """
)


@pytest.mark.gpu
def test_on_cuda_running_out_of_memory_retries_at_half_the_micro_batch() -> None:
    # 65,536 examples × 1024 activations in float32 is 256 MiB per copy of an activation,
    # several times the 64 MiB of headroom; a few thousand examples at a time fit.
    done = subprocess.run(
        [sys.executable, "-c", _CUDA_CHILD, "64", "65536"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    out = done.stdout.strip()

    assert done.returncode == 0 and out.startswith("fitted "), done.stdout + done.stderr
    fitted, within_cap = int(out.split()[1]), out.split()[2]
    assert fitted < 65536 and 65536 % fitted == 0  # halved from the whole batch, exactly
    assert within_cap == "True"
