"""Named losses against brute-force references, and early loss/data compatibility checks."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from lrprobe.worker.intake.data.dataset import Dataset, build_dataset
from lrprobe.worker.intake.errors import IntakeError
from lrprobe.worker.intake.losses import LOSSES, check_loss, get_loss, model_logits


def classification(classes: int = 3, count: int = 8) -> Dataset:
    x = torch.randn(count, 4, generator=torch.Generator().manual_seed(0))
    return build_dataset("cls", "classification", x, torch.arange(count) % classes)


def regression(targets: torch.Tensor) -> Dataset:
    return build_dataset("reg", "regression", torch.ones(targets.shape[0], 4), targets)


def tokens(vocab: int = 11) -> Dataset:
    stream = torch.arange(41) % vocab
    return build_dataset(
        "lm", "tokens", stream[:40].view(5, 8), stream[1:41].view(5, 8), block_size=8
    )


class Fixed(nn.Module):
    """Returns a fixed output whatever the input, to compare losses with hand computations."""

    def __init__(self, output: object) -> None:
        super().__init__()
        self.output = output

    def forward(self, x: torch.Tensor) -> object:
        return self.output


@dataclass
class HFStyleOutput:
    logits: torch.Tensor


def test_cross_entropy_matches_the_formula() -> None:
    logits = torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])
    expected = -(logits.log_softmax(1)[torch.arange(4), y]).mean()
    value = get_loss("cross_entropy")(Fixed(logits), (torch.zeros(4, 1), y))
    assert torch.allclose(value, expected)


def test_mse_does_not_broadcast_a_column_against_a_vector() -> None:
    output = torch.tensor([[1.0], [2.0], [4.0]])
    y = torch.tensor([1.0, 1.0, 1.0])
    value = get_loss("mse")(Fixed(output), (torch.zeros(3, 1), y))
    assert float(value) == pytest.approx((0 + 1 + 9) / 3)


def test_mse_on_class_labels_uses_one_hot_targets() -> None:
    output = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 2.0]])
    y = torch.tensor([0, 1])
    value = get_loss("mse")(Fixed(output), (torch.zeros(2, 1), y))
    # (0.5-1)^2 + 0 + 0 + 0 + (0-1)^2 + (2-0)^2 over 6 entries
    assert float(value) == pytest.approx((0.25 + 1 + 4) / 6)


def test_bce_takes_integer_labels_against_a_logit_column() -> None:
    logits = torch.tensor([[0.3], [-1.2], [2.0]])
    y = torch.tensor([1, 0, 1])
    value = get_loss("bce")(Fixed(logits), (torch.zeros(3, 1), y))
    p = torch.sigmoid(logits.squeeze(1))
    expected = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    assert torch.allclose(value, expected)


def test_lm_cross_entropy_over_all_positions() -> None:
    logits = torch.randn(2, 5, 7, dtype=torch.float64)
    y = torch.randint(0, 7, (2, 5))
    expected = -(logits.log_softmax(-1).gather(-1, y.unsqueeze(-1))).mean()
    value = get_loss("lm_cross_entropy")(Fixed((logits, None)), (torch.zeros(2, 5), y))
    assert torch.allclose(value, expected)


def test_losses_reach_parameters_through_a_real_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    data = classification()
    loss = get_loss("cross_entropy")(model, (data.x, data.y))
    loss.backward()
    assert loss.ndim == 0
    assert all(p.grad is not None for p in model.parameters())


def test_model_outputs_are_unwrapped() -> None:
    t = torch.zeros(2, 3)
    assert model_logits(t) is t
    assert model_logits(HFStyleOutput(t)) is t
    assert model_logits((t, torch.tensor(1.0))) is t
    with pytest.raises(IntakeError) as info:
        model_logits({"out": t})
    assert info.value.code == "incompatible_model_output"


def test_every_named_loss_exists_and_unknown_names_are_refused() -> None:
    for name in LOSSES:
        assert callable(get_loss(name))
    with pytest.raises(IntakeError) as info:
        get_loss("hinge")
    assert info.value.code == "unknown_loss"
    assert "cross_entropy" in info.value.message


@pytest.mark.parametrize(
    ("loss", "dataset", "advice"),
    [
        ("cross_entropy", regression(torch.randn(4)), "mse"),
        ("lm_cross_entropy", classification(), "cross_entropy"),
        ("mse", tokens(), "lm_cross_entropy"),
        ("cross_entropy", tokens(), "lm_cross_entropy"),
        ("bce", classification(3), "cross_entropy"),
        ("bce", regression(torch.tensor([0.0, 0.5, 3.0])), "mse"),
    ],
)
def test_incompatible_loss_and_data_fail_early(loss: str, dataset: Dataset, advice: str) -> None:
    with pytest.raises(IntakeError) as info:
        check_loss(loss, dataset)
    assert info.value.code == "incompatible_loss"
    assert advice in info.value.message


@pytest.mark.parametrize(
    ("loss", "dataset", "output"),
    [
        ("cross_entropy", classification(3), torch.zeros(2, 3)),
        ("cross_entropy", classification(3), torch.zeros(2, 10)),
        ("mse", regression(torch.randn(4)), torch.zeros(2, 1)),
        ("mse", regression(torch.randn(4, 2)), torch.zeros(2, 2)),
        ("mse", classification(3), torch.zeros(2, 3)),
        ("bce", classification(2), torch.zeros(2, 1)),
        ("bce", regression(torch.rand(4, 5)), torch.zeros(2, 5)),
        ("lm_cross_entropy", tokens(11), HFStyleOutput(torch.zeros(2, 8, 16))),
    ],
)
def test_compatible_outputs_pass_the_check(loss: str, dataset: Dataset, output: object) -> None:
    check_loss(loss, dataset, output)


@pytest.mark.parametrize(
    ("loss", "dataset", "output", "fragment"),
    [
        ("cross_entropy", classification(3), torch.zeros(2, 2), "scores 2 classes"),
        ("cross_entropy", classification(3), torch.zeros(2), "(2,)"),
        ("mse", regression(torch.randn(4)), torch.zeros(2, 3), "(2, 3)"),
        ("mse", classification(3), torch.zeros(2, 1), "scores 1 classes"),
        ("bce", classification(2), torch.zeros(2, 2), "(2, 2)"),
        ("lm_cross_entropy", tokens(11), torch.zeros(2, 8, 5), "vocabulary has 5"),
        ("lm_cross_entropy", tokens(11), torch.zeros(2, 11), "(B, T, V)"),
    ],
)
def test_mismatched_outputs_fail_the_check(
    loss: str, dataset: Dataset, output: torch.Tensor, fragment: str
) -> None:
    with pytest.raises(IntakeError) as info:
        check_loss(loss, dataset, output)
    assert info.value.code == "incompatible_model_output"
    assert fragment in info.value.message


def test_loss_functions_refuse_mismatched_shapes_at_call_time() -> None:
    with pytest.raises(IntakeError) as info:
        get_loss("mse")(Fixed(torch.zeros(3, 2)), (torch.zeros(3, 1), torch.zeros(3)))
    assert info.value.code == "incompatible_model_output"
