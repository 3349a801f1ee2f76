"""Transformer-aware partitions: per block, per kind within a block, the automatic cap, and an
embedding tied to the output head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lrprobe.worker.intake.checkpoints.architectures.gpt import GPT, GPTConfig
from lrprobe.worker.newton import losses, partition, probe, summaries
from lrprobe.worker.newton.partition import AUTO_MAX_GROUPS
from tests.newton.cases import assert_scaled_close, gradient, reference


def gpt(n_layer: int = 3, tie: bool = True, dtype: torch.dtype = torch.float64) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=11, block_size=6, n_layer=n_layer, n_head=2, n_embd=8, tie_weights=tie
    )
    return GPT(config).to(dtype)


def tokens(seed: int, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(11, (batch, 7), generator=generator)
    return ids[:, :-1], ids[:, 1:]


def test_block_rule_gives_one_group_per_block_and_keeps_the_rest_per_layer() -> None:
    groups = partition(gpt(), rule="block")

    assert [g.name for g in groups] == [
        "transformer.wte",
        "transformer.wpe",
        "transformer.h.0",
        "transformer.h.1",
        "transformer.h.2",
        "transformer.ln_f",
    ]
    block = groups[3].param_names
    assert block[0] == "transformer.h.1.ln_1.weight"
    assert all(n.startswith("transformer.h.1.") for n in block)
    assert len(block) == 12  # 2 LayerNorms, 4 Linear layers, each with weight and bias


def test_kind_rule_splits_each_block_into_attention_mlp_and_norm() -> None:
    groups = {g.name: g.param_names for g in partition(gpt(n_layer=2), rule="kind")}

    assert list(groups) == [
        "embedding",
        "transformer.h.0.norm",
        "transformer.h.0.attention",
        "transformer.h.0.mlp",
        "transformer.h.1.norm",
        "transformer.h.1.attention",
        "transformer.h.1.mlp",
        "transformer.ln_f",
    ]
    assert groups["embedding"] == ("transformer.wte.weight", "transformer.wpe.weight")
    assert groups["transformer.h.1.norm"] == (
        "transformer.h.1.ln_1.weight",
        "transformer.h.1.ln_1.bias",
        "transformer.h.1.ln_2.weight",
        "transformer.h.1.ln_2.bias",
    )
    assert all(".attn." in n for n in groups["transformer.h.0.attention"])
    assert all(".mlp." in n for n in groups["transformer.h.0.mlp"])


class _TorchBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4)
        self.mha = nn.MultiheadAttention(4, 2)
        self.qkv = nn.Linear(4, 12)
        self.fc = nn.Linear(4, 4)


def test_attention_is_recognised_by_module_class_and_names() -> None:
    model = nn.ModuleDict({"layers": nn.ModuleList([_TorchBlock(), _TorchBlock()])})

    groups = {g.name: g.param_names for g in partition(model, rule="kind")}

    assert groups["layers.1.attention"] == (
        "layers.1.mha.in_proj_weight",
        "layers.1.mha.in_proj_bias",
        "layers.1.mha.out_proj.weight",
        "layers.1.mha.out_proj.bias",
        "layers.1.qkv.weight",
        "layers.1.qkv.bias",
    )
    assert groups["layers.1.mlp"] == ("layers.1.fc.weight", "layers.1.fc.bias")
    assert groups["layers.1.norm"] == ("layers.1.norm.weight", "layers.1.norm.bias")


def test_a_sequential_of_single_layers_has_no_blocks() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))

    for rule in ("block", "kind"):
        assert [g.name for g in partition(model, rule=rule)] == ["0", "2"]


def test_every_rule_covers_each_parameter_exactly_once() -> None:
    model = gpt()
    trainable = [n for n, _ in model.named_parameters()]
    for rule in ("layer", "block", "kind", "tensor", "single"):
        names = [n for g in partition(model, rule=rule) for n in g.param_names]
        assert sorted(names) == sorted(trainable), rule


def test_auto_cap_coarsens_along_the_structure_before_merging() -> None:
    # 12 blocks: 75 layers and 38 kinds are above the cap, 15 blocks are not.
    model = gpt(n_layer=12)

    groups = partition(model, rule="layer", max_groups="auto")

    assert len(partition(model, rule="layer")) == 75
    assert len(partition(model, rule="kind")) == 38
    assert [g.name for g in groups] == [g.name for g in partition(model, rule="block")]
    assert len(groups) == 15 <= AUTO_MAX_GROUPS


def test_auto_cap_keeps_small_models_as_they_are() -> None:
    model = gpt(n_layer=2)

    assert partition(model, max_groups="auto") == partition(model)


def test_auto_cap_merges_consecutive_blocks_when_blocks_are_too_many() -> None:
    model = gpt(n_layer=20)

    groups = partition(model, max_groups="auto")

    assert len(groups) == AUTO_MAX_GROUPS
    # Blocks are merged whole and in order: no block is split between two groups.
    owner = {n: i for i, g in enumerate(groups) for n in g.param_names}
    for block in partition(model, rule="block"):
        assert len({owner[n] for n in block.param_names}) == 1, block.name
    assert [owner[g.param_names[0]] for g in partition(model, rule="block")] == sorted(
        owner[g.param_names[0]] for g in partition(model, rule="block")
    )


def test_a_bad_max_groups_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="'auto'"):
        partition(gpt(), max_groups="many")  # type: ignore[arg-type]


# Tied weights: nn.Module.named_parameters() lists a shared tensor once, under its first name.


def test_a_tied_embedding_is_one_tensor_in_one_group() -> None:
    model = gpt(tie=True)
    assert model.lm_head.weight is model.transformer.wte.weight

    for rule in ("layer", "block", "kind", "tensor"):
        names = [n for g in partition(model, rule=rule) for n in g.param_names]
        assert "transformer.wte.weight" in names, rule
        assert "lm_head.weight" not in names, rule


def test_summaries_of_a_tied_model_differentiate_through_both_uses() -> None:
    # The tied tensor moves as one: the reference steps it once, and every use sees the step.
    model = gpt(tie=True)
    groups = partition(model, rule="kind")
    direction = gradient(model, losses.lm_cross_entropy, tokens(seed=2))
    batch = tokens(seed=1)

    got = summaries(model, losses.lm_cross_entropy, batch, direction, groups)
    want = reference(
        model, losses.lm_cross_entropy, batch, direction, [g.param_names for g in groups]
    )

    assert_scaled_close(got.g, want.g, rel=1e-10, what="g")
    assert_scaled_close(got.H, want.H, rel=1e-10, what="H")
    assert_scaled_close(got.d3, want.d3, rel=1e-8, what="d3")


def test_the_tied_embeddings_gradient_sums_the_input_and_output_uses() -> None:
    # Untied twin with the same values: the tied gradient is the sum of its two gradients.
    tied, untied = gpt(tie=True), gpt(tie=False)
    untied.load_state_dict(tied.state_dict())
    with torch.no_grad():
        untied.lm_head.weight.copy_(tied.transformer.wte.weight)
    batch = tokens(seed=1)

    g_tied = gradient(tied, losses.lm_cross_entropy, batch)
    g_untied = gradient(untied, losses.lm_cross_entropy, batch)

    expected = g_untied["transformer.wte.weight"] + g_untied["lm_head.weight"]
    assert_scaled_close(g_tied["transformer.wte.weight"], expected, rel=1e-12)
    assert float(g_untied["lm_head.weight"].abs().max()) > 0


def test_a_tied_models_recommendation_builds_a_valid_optimizer() -> None:
    model = gpt(tie=True, dtype=torch.float32)
    batches = (tokens(seed=10 + k, batch=8) for k in range(10**6))

    result = probe(
        model, losses.lm_cross_entropy, batches, "adamw", "block", steps=4, period=2,
        calibration_steps=2,
    )  # fmt: skip

    # torch.optim refuses a tensor listed in two groups; every parameter must be in one.
    optimizer = torch.optim.AdamW(result.param_groups(model))
    listed = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(listed) == len({id(p) for p in listed}) == len(list(model.parameters()))
    assert [g.name for g in result.groups][:2] == ["transformer.wte", "transformer.wpe"]
