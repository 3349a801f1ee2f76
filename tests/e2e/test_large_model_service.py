"""A GPT-2-class Hugging Face checkpoint probed end to end through the service, at a reduced
size: 12 blocks as in GPT-2 small, narrow enough for a test (``bench/large.py`` runs the full
size through ``lrprobe probe``, and with ``--service`` through the service). Upload the folder,
upload byte tokens of the standard library's source, submit, wait, build the optimizer from the
recommendation."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from lrprobe.client import Client
from tests.e2e.test_sdk_training import service  # noqa: F401  (the fixture)

transformers = pytest.importorskip("transformers")


def stdlib_tokens(limit: int) -> np.ndarray:
    source = Path(sysconfig.get_paths()["stdlib"]) / "argparse.py"
    return np.frombuffer(source.read_bytes()[:limit], dtype=np.uint8).astype(np.int64)


def test_a_twelve_block_hf_transformer_is_probed_per_block(
    service: Client,  # noqa: F811
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=12, n_head=2, n_embd=16, vocab_size=256, n_positions=16, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(tmp_path / "gpt2-class", safe_serialization=True)
    np.save(tmp_path / "tokens.npy", stdlib_tokens(20_000))

    uploaded = service.upload_model(tmp_path / "gpt2-class")
    dataset = service.upload_dataset(tmp_path / "tokens.npy")
    job = service.submit(
        model=uploaded, data=dataset, loss="lm_cross_entropy", optimizer="adamw",
        budget={"batches": 4, "batch_size": 4, "calibration_steps": 4}, block_size=8,
        device="cpu", wait=True, timeout=1800,
    )  # fmt: skip
    rec = job.recommendation()

    assert job.status == "succeeded", job
    # The job's calibration length reached the probe: 3 runs of 4 steps, not of the default 40.
    assert rec.data.cost.passes["forward_backward"] < 40
    # 75 layers → the automatic cap probes one group per block, embeddings and final norm apart.
    assert [g.name for g in rec.groups] == [
        "transformer.wte",
        "transformer.wpe",
        *(f"transformer.h.{i}" for i in range(12)),
        "transformer.ln_f",
    ]
    assert all(lr is not None and lr > 0 for lr in rec.lrs.values())
    # The output head shares the token embedding: one tensor, one group, one learning rate.
    optimizer = torch.optim.AdamW(rec.param_groups(model))
    listed = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(listed) == len({id(p) for p in listed}) == len(list(model.parameters()))
