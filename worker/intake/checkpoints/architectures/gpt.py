"""A small GPT-style causal language model in plain torch (nanoGPT layout).

Attention is written out (masked softmax of q k^T) rather than calling
``scaled_dot_product_attention``: fused attention kernels do not all support the second
derivatives that a Newton probe takes.
"""

from __future__ import annotations

import math
from typing import Self

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from torch import nn
from torch.nn import functional as F

from lrprobe.worker.intake.checkpoints.architectures._registry import ArchitectureSpec


class GPTConfig(BaseModel):
    """Token ids in ``[0, vocab_size)``, sequences of at most ``block_size`` tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: PositiveInt = Field(default=256, description="Number of token ids (256: bytes).")
    block_size: PositiveInt = Field(default=64, description="Longest sequence (context).")
    n_layer: PositiveInt = Field(default=2, description="Transformer blocks.")
    n_head: PositiveInt = Field(default=2, description="Attention heads; divides n_embd.")
    n_embd: PositiveInt = Field(default=64, description="Embedding width.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout probability.")
    bias: bool = Field(default=True, description="Bias in Linear layers and LayerNorms.")
    tie_weights: bool = Field(
        default=True, description="Share the token embedding with the output head."
    )

    @model_validator(mode="after")
    def _check_heads(self) -> Self:
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        return self


class CausalSelfAttention(nn.Module):
    causal_mask: torch.Tensor

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        mask = torch.tril(torch.ones(config.block_size, config.block_size, dtype=torch.bool))
        # Derived from block_size, so not part of the state dict.
        self.register_buffer("causal_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, channels = x.shape
        q, k, v = self.c_attn(x).split(channels, dim=2)
        head = channels // self.n_head
        q = q.view(batch, time, self.n_head, head).transpose(1, 2)
        k = k.view(batch, time, self.n_head, head).transpose(1, 2)
        v = v.view(batch, time, self.n_head, head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(head))
        att = att.masked_fill(~self.causal_mask[:time, :time], float("-inf"))
        att = self.attn_dropout(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).contiguous().view(batch, time, channels)
        return self.resid_dropout(self.c_proj(y))


class MLPBlock(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLPBlock(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Trunk(nn.Module):
    """Embeddings, blocks and the final LayerNorm (``transformer.*`` in parameter names)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        return self.ln_f(x)


class GPT(nn.Module):
    """Maps token ids ``(batch, time)`` (int64) to logits ``(batch, time, vocab_size)``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.block_size = config.block_size
        self.transformer = Trunk(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        time = idx.shape[1]
        if time > self.block_size:
            raise ValueError(
                f"sequence of {time} tokens is longer than block_size {self.block_size}"
            )
        return self.lm_head(self.transformer(idx))


GPT_SPEC = ArchitectureSpec(
    name="gpt",
    config_model=GPTConfig,
    factory=GPT,
    description="Small GPT-style causal LM (LayerNorm, causal self-attention, tied head).",
)
