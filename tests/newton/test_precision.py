"""Derivatives of bfloat16 models and of models under autocast, against float64.

The reference is the float64 twin of the bfloat16 model (the same rounded weights, widened),
so the only difference left is the arithmetic of the passes.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import pytest
import torch

from lrprobe.worker.intake.checkpoints.architectures.gpt import GPT, GPTConfig
from lrprobe.worker.newton import losses, partition, probe, summaries
from tests.newton.cases import assert_scaled_close, gradient, reference

LOSS = losses.lm_cross_entropy
M = TypeVar("M", bound=torch.nn.Module)


def gpt_bf16() -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=16)
    return GPT(config).to(torch.bfloat16)


def tokens(seed: int, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(11, (batch, 7), generator=generator)
    return ids[:, :-1], ids[:, 1:]


def twin(model: M, dtype: torch.dtype) -> M:
    """The same model in another dtype (same weights, cast), leaving ``model`` as it is."""
    return copy.deepcopy(model).to(dtype)


@pytest.fixture(scope="module")
def problem() -> tuple[GPT, GPT, dict[str, torch.Tensor], list, object]:
    model = gpt_bf16()
    wide = twin(model, torch.float64)
    groups = partition(model, rule="kind")
    # A direction that float32 holds exactly, so that both sides step along the same u.
    direction = {k: v.float().double() for k, v in gradient(wide, LOSS, tokens(2)).items()}
    want = reference(wide, LOSS, tokens(1), direction, [g.param_names for g in groups])
    return model, wide, direction, groups, want


def test_a_bfloat16_models_summaries_are_float32_accurate(problem) -> None:  # type: ignore[no-untyped-def]
    model, _, direction, groups, want = problem

    got = summaries(model, LOSS, tokens(1), direction, groups)

    assert_scaled_close(got.g, want.g, rel=1e-5, what="g")
    assert_scaled_close(got.H, want.H, rel=1e-5, what="H")
    assert_scaled_close(got.d3, want.d3, rel=1e-4, what="d3")


def test_derivatives_in_bfloat16_itself_are_far_off(problem) -> None:  # type: ignore[no-untyped-def]
    # Why the upcast exists: the same passes in the model's bfloat16 miss by percents.
    model, _, direction, groups, want = problem

    got = summaries(model, LOSS, tokens(1), direction, groups, precision="model")

    error = float((got.H - want.H).abs().max()) / float(want.H.abs().max())
    assert error > 1e-3


def test_the_bfloat16_model_comes_back_bit_for_bit(problem) -> None:  # type: ignore[no-untyped-def]
    model, _, direction, groups, _ = problem
    before = {k: v.clone() for k, v in model.state_dict().items()}
    storage = {n: p.data_ptr() for n, p in model.named_parameters()}

    summaries(model, LOSS, tokens(1), direction, groups)

    for name, value in model.state_dict().items():
        assert value.dtype == torch.bfloat16 and torch.equal(value, before[name]), name
    assert storage == {n: p.data_ptr() for n, p in model.named_parameters()}


def test_autocast_around_the_probe_does_not_reach_the_derivatives() -> None:
    model = twin(gpt_bf16(), torch.float32)
    wide = twin(model, torch.float64)
    groups = partition(model, rule="block")
    direction = {k: v.float().double() for k, v in gradient(wide, LOSS, tokens(2)).items()}
    want = reference(wide, LOSS, tokens(1), direction, [g.param_names for g in groups])

    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = summaries(model, LOSS, tokens(1), direction, groups)
        lossy = summaries(model, LOSS, tokens(1), direction, groups, precision="model")

    assert_scaled_close(got.H, want.H, rel=1e-5, what="H under autocast")
    assert float((lossy.H - want.H).abs().max()) > 1e-3 * float(want.H.abs().max())


def test_tf32_is_off_inside_the_passes_and_restored_after() -> None:
    model = twin(gpt_bf16(), torch.float32)
    groups = partition(model, rule="single")
    seen: list[tuple[str, str]] = []

    def spying_loss(m: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        seen.append(
            (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
        )
        return LOSS(m, batch)

    direction = gradient(model, LOSS, tokens(2))
    before = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        summaries(model, spying_loss, tokens(1), direction, groups)
        after = torch.backends.cuda.matmul.fp32_precision
    finally:
        torch.backends.cuda.matmul.fp32_precision = before[0]

    assert seen == [("ieee", "ieee")]
    assert after == "tf32"


def test_an_unknown_precision_is_refused() -> None:
    model = gpt_bf16()
    with pytest.raises(ValueError, match="float32"):
        summaries(model, LOSS, tokens(1), gradient(model, LOSS, tokens(2)), partition(model),
                  precision="float16")  # type: ignore[arg-type]  # fmt: skip


def shifted_tokens(seed: int, batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable stream: each token is the previous one + 1 (mod 11), 10 % of them noise."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randint(11, (batch, 1), generator=generator)
    seq = (start + torch.arange(7)) % 11
    noise = torch.rand(batch, 7, generator=generator) < 0.1
    seq = torch.where(noise, torch.randint(11, (batch, 7), generator=generator), seq)
    return seq[:, :-1], seq[:, 1:]


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_a_bfloat16_models_recommendation_matches_its_float32_twin(optimizer: str) -> None:
    # The trajectory trains in the model's dtype, as the user does; only the derivatives are
    # float32. bfloat16 steps round differently, so the rates agree to rounding, not exactly.
    model = gpt_bf16()
    results = [
        probe(
            m,
            LOSS,
            (shifted_tokens(k) for k in range(10**6)),
            optimizer,
            "block",
            steps=16,
            period=4,
            calibration_steps=16,
        )
        for m in (model, twin(model, torch.float32))
    ]

    half, full = results
    assert half.scale == full.scale
    for h, f in zip(half.groups, full.groups, strict=True):
        assert h.name == f.name
        assert h.lr == pytest.approx(f.lr, rel=0.15), h.name
    assert half.single_group_lr == pytest.approx(full.single_group_lr, rel=0.15)


# --------------------------------------------------------------------------------------------
# CUDA. TF32 and CUDA autocast only exist there (on the CPU the TF32 switch changes nothing), so
# these are the tests that catch either reaching the derivatives.


def _wide_mlp() -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """A float32 tanh MLP wide enough for cuBLAS to take its TF32 kernels, and a batch."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 256), torch.nn.Tanh(), torch.nn.Linear(256, 256), torch.nn.Tanh(),
        torch.nn.Linear(256, 10),
    )  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    return model, (torch.randn(512, 256, generator=generator),
                   torch.randint(10, (512,), generator=generator))  # fmt: skip


def _cross_entropy(m: torch.nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(m(b[0]), b[1])


def _on_cuda(
    model: torch.nn.Module, batch: tuple[torch.Tensor, ...], direction: dict[str, torch.Tensor]
) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    cuda = torch.device("cuda")
    return (
        model.to(cuda),
        tuple(t.to(cuda) for t in batch),
        {n: u.to(cuda) for n, u in direction.items()},
    )


def _error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).abs().max()) / float(want.abs().max())


@pytest.mark.gpu
def test_on_cuda_global_tf32_does_not_reach_the_derivatives() -> None:
    model, batch = _wide_mlp()
    wide = twin(model, torch.float64)
    groups = partition(model, rule="layer")
    direction = {k: v.float().double() for k, v in gradient(wide, _cross_entropy,
                 (batch[0].double(), batch[1])).items()}  # fmt: skip
    want = reference(wide, _cross_entropy, (batch[0].double(), batch[1]), direction,
                     [g.param_names for g in groups])  # fmt: skip
    model, cuda_batch, cuda_direction = _on_cuda(model, batch, direction)

    before = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        got = summaries(model, _cross_entropy, cuda_batch, cuda_direction, groups)
        lossy = summaries(model, _cross_entropy, cuda_batch, cuda_direction, groups,
                          precision="model")  # fmt: skip
    finally:
        torch.backends.cuda.matmul.fp32_precision = before

    # The control: with TF32 on, the same passes lose about three decimal digits on this GPU.
    assert _error(lossy.H, want.H) > 10 * _error(got.H, want.H), (lossy.H, got.H)
    assert_scaled_close(got.g, want.g, rel=1e-5, what="g with TF32 on")
    assert_scaled_close(got.H, want.H, rel=1e-5, what="H with TF32 on")
    assert got.d3 is not None and want.d3 is not None
    assert_scaled_close(got.d3, want.d3, rel=1e-4, what="d3 with TF32 on")


@pytest.mark.gpu
def test_on_cuda_a_bfloat16_model_under_autocast_gets_float32_derivatives(problem) -> None:  # type: ignore[no-untyped-def]
    model, _, direction, groups, want = problem
    cuda_model, batch, cuda_direction = _on_cuda(twin(model, torch.bfloat16), tokens(1),
                                                 direction)  # fmt: skip

    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = summaries(cuda_model, LOSS, batch, cuda_direction, groups)

    assert_scaled_close(got.g, want.g, rel=1e-5, what="g on CUDA")
    assert_scaled_close(got.H, want.H, rel=1e-5, what="H on CUDA")
    assert_scaled_close(got.d3, want.d3, rel=1e-4, what="d3 on CUDA")
    assert all(p.dtype == torch.bfloat16 for p in cuda_model.parameters())


@pytest.mark.gpu
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_on_cuda_a_bfloat16_models_recommendation_matches_its_float32_twin(
    optimizer: str,
) -> None:
    cuda = torch.device("cuda")
    model = gpt_bf16()
    full = twin(model, torch.float32).to(cuda)
    pair = (model.to(cuda), full)
    results = [
        probe(
            m,
            LOSS,
            (tuple(t.to(cuda) for t in shifted_tokens(k)) for k in range(10**6)),
            optimizer,
            "block",
            steps=16,
            period=4,
            calibration_steps=16,
        )
        for m in pair
    ]

    half, full = results
    assert half.cost.device.startswith("cuda") and full.cost.device.startswith("cuda")
    for h, f in zip(half.groups, full.groups, strict=True):
        assert h.lr == pytest.approx(f.lr, rel=0.15), h.name
    assert half.single_group_lr == pytest.approx(full.single_group_lr, rel=0.15)
