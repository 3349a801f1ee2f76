"""The architecture registry: built-in models, config validation and entry-point plugins."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel
from torch import nn

from lrprobe.worker.intake.checkpoints.architectures import (
    ENTRY_POINT_GROUP,
    GPT,
    ArchitectureSpec,
    GPTConfig,
    _registry,
    get_architecture,
    list_architectures,
    refresh_architectures,
)
from lrprobe.worker.intake.checkpoints.loading import load_checkpoint, save_checkpoint
from lrprobe.worker.intake.errors import IntakeError

# name, config, a matching input batch
CASES: list[tuple[str, dict[str, Any], torch.Tensor]] = [
    ("mlp", {}, torch.randn(3, 64)),
    ("mlp", {"sizes": [12, 8, 8, 3], "activation": "tanh", "dropout": 0.1}, torch.randn(3, 12)),
    ("mlp", {"activation": "gelu"}, torch.randn(3, 1, 8, 8)),
    ("cnn", {}, torch.randn(2, 1, 28, 28)),
    ("cnn", {"batch_norm": True, "in_channels": 3, "image_size": 16}, torch.randn(2, 3, 16, 16)),
    ("resnet", {}, torch.randn(2, 3, 32, 32)),
    ("resnet", {"depth": 18, "width": 8, "num_classes": 5}, torch.randn(2, 3, 32, 32)),
    ("gpt", {}, torch.randint(0, 256, (2, 16))),
    ("gpt", {"tie_weights": False, "bias": False, "n_layer": 1}, torch.randint(0, 256, (2, 64))),
]
CASE_IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(CASES)]


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    refresh_architectures()
    yield
    refresh_architectures()


def test_builtin_architectures_are_listed_by_name() -> None:
    assert [spec.name for spec in list_architectures()] == ["cnn", "gpt", "mlp", "resnet"]


@pytest.mark.parametrize(("name", "config", "batch"), CASES, ids=CASE_IDS)
def test_architecture_builds_and_runs_forward(
    name: str, config: dict[str, Any], batch: torch.Tensor
) -> None:
    model = get_architecture(name).build(config)

    out = model(batch)

    assert out.shape[0] == batch.shape[0]
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "config", "batch"), CASES, ids=CASE_IDS)
def test_architecture_round_trips_through_safetensors_bit_for_bit(
    name: str, config: dict[str, Any], batch: torch.Tensor, tmp_path: Path
) -> None:
    model = get_architecture(name).build(config)
    path = tmp_path / "model.safetensors"

    save_checkpoint(model, path, name, config)
    loaded = load_checkpoint(path)

    original, restored = model.state_dict(), loaded.model.state_dict()
    assert original.keys() == restored.keys()
    for key, value in original.items():
        assert restored[key].dtype == value.dtype
        assert torch.equal(restored[key], value), key
    assert loaded.arch == name
    model.eval()
    loaded.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(batch), model(batch))


def test_gpt_ties_head_to_embedding_by_default() -> None:
    model = get_architecture("gpt").build()

    assert isinstance(model, GPT)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_gpt_is_causal() -> None:
    model = get_architecture("gpt").build(GPTConfig(n_layer=1)).eval()
    tokens = torch.randint(0, 256, (1, 10))
    changed = tokens.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 256

    with torch.no_grad():
        before, after = model(tokens), model(changed)

    assert torch.equal(before[0, :-1], after[0, :-1])
    assert not torch.equal(before[0, -1], after[0, -1])


def test_gpt_supports_second_derivatives() -> None:
    model = get_architecture("gpt").build(GPTConfig(n_layer=1, n_embd=16))
    tokens = torch.randint(0, 256, (2, 8))
    params = list(model.parameters())

    loss = model(tokens).logsumexp(-1).mean()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    grad_norm = torch.stack([(g * g).sum() for g in grads]).sum()
    hvp = torch.autograd.grad(grad_norm, params, allow_unused=True)

    assert any(h is not None and h.abs().sum() > 0 for h in hvp)


def test_resnet18_has_four_stages_and_resnet20_three() -> None:
    resnet18 = get_architecture("resnet").build({"depth": 18, "width": 4})
    resnet20 = get_architecture("resnet").build({"depth": 20})

    assert (
        hasattr(resnet18, "layer4") and len(list(resnet18.get_submodule("layer1").children())) == 2
    )
    assert (
        not hasattr(resnet20, "layer4")
        and len(list(resnet20.get_submodule("layer1").children())) == 3
    )
    assert any(isinstance(m, nn.BatchNorm2d) for m in resnet20.modules())


def test_unknown_architecture_lists_the_known_names() -> None:
    with pytest.raises(IntakeError) as info:
        get_architecture("transformerXL")

    assert info.value.code == "unknown_architecture"
    for name in ("mlp", "cnn", "resnet", "gpt"):
        assert name in info.value.message


@pytest.mark.parametrize(
    ("name", "config", "field"),
    [
        ("mlp", {"sizes": [10]}, "sizes"),
        ("mlp", {"activation": "sigmoid"}, "activation"),
        ("mlp", {"dropout": 1.5}, "dropout"),
        ("mlp", {"widths": [1, 2]}, "widths"),
        ("cnn", {"image_size": 2, "channels": [4, 4, 4]}, "image_size"),
        ("cnn", {"kernel_size": 4}, "kernel_size"),
        ("resnet", {"depth": 19}, "depth"),
        ("gpt", {"n_embd": 30, "n_head": 4}, "n_embd"),
        ("gpt", {"vocab_size": 0}, "vocab_size"),
    ],
)
def test_invalid_config_names_the_field(name: str, config: dict[str, Any], field: str) -> None:
    with pytest.raises(IntakeError) as info:
        get_architecture(name).build(config)

    assert info.value.code == "invalid_arch_config"
    assert field in info.value.message


def test_config_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(IntakeError) as info:
        get_architecture("mlp").validate_config([64, 10])  # type: ignore[arg-type]

    assert info.value.code == "invalid_arch_config"


class _TinyConfig(BaseModel):
    width: int = 3


class _EntryPoint:
    """Stands in for importlib.metadata.EntryPoint."""

    def __init__(self, name: str, value: object) -> None:
        self.name = name
        self.value = f"operator_plugin:{name}"
        self._value = value

    def load(self) -> object:
        return self._value


def _install_entry_points(monkeypatch: pytest.MonkeyPatch, *entries: _EntryPoint) -> None:
    def fake_entry_points(*, group: str) -> list[_EntryPoint]:
        assert group == ENTRY_POINT_GROUP
        return list(entries)

    monkeypatch.setattr(_registry.metadata, "entry_points", fake_entry_points)
    refresh_architectures()


def test_entry_point_adds_an_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ArchitectureSpec(
        name="tiny", config_model=_TinyConfig, factory=lambda c: nn.Linear(c.width, 1)
    )
    _install_entry_points(monkeypatch, _EntryPoint("tiny", spec))

    assert get_architecture("tiny") is spec
    assert "tiny" in [s.name for s in list_architectures()]
    assert get_architecture("tiny").build({"width": 5}).in_features == 5


def test_entry_point_architecture_round_trips(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = ArchitectureSpec(
        name="tiny", config_model=_TinyConfig, factory=lambda c: nn.Linear(c.width, 1)
    )
    _install_entry_points(monkeypatch, _EntryPoint("tiny", spec))
    model = spec.build({"width": 4})

    save_checkpoint(model, tmp_path / "tiny.safetensors", "tiny", {"width": 4})
    loaded = load_checkpoint(tmp_path / "tiny.safetensors")

    assert loaded.arch == "tiny" and loaded.config == {"width": 4}
    assert torch.equal(loaded.model.get_parameter("weight"), model.get_parameter("weight"))


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        (_EntryPoint("bogus", object()), TypeError),
        (
            _EntryPoint("mlp", ArchitectureSpec("mlp", _TinyConfig, lambda c: nn.Identity())),
            ValueError,
        ),
        (
            _EntryPoint("other", ArchitectureSpec("tiny", _TinyConfig, lambda c: nn.Identity())),
            ValueError,
        ),
    ],
    ids=["not-a-spec", "collides-with-builtin", "name-differs"],
)
def test_misconfigured_entry_point_fails_loudly(
    monkeypatch: pytest.MonkeyPatch, entry: _EntryPoint, error: type[Exception]
) -> None:
    _install_entry_points(monkeypatch, entry)

    with pytest.raises(error):
        get_architecture("mlp")


def test_real_entry_point_discovery_runs() -> None:
    # Whatever this environment has installed, discovery must succeed and keep the built-ins.
    assert isinstance(metadata.entry_points(group=ENTRY_POINT_GROUP), metadata.EntryPoints)
    assert {"mlp", "cnn", "resnet", "gpt"} <= {s.name for s in list_architectures()}
