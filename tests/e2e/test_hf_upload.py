"""A Hugging Face model uploaded through the API runs (issue 16, finding 8).

A real ``save_pretrained`` GPT-2 (a tiny config) is packed as ``.tar.gz`` the way a user would,
uploaded with ``POST /v1/models`` together with a token stream (``POST /v1/datasets``), and the
job submitted with ``POST /v1/jobs`` is run by the worker's runner, its probe in the supervised
child process. The API keeps the archive's ``config.json`` on the model row to describe it; the
worker must build the model from the archive, not take that config for a registry one.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lrprobe.service import migrate
from lrprobe.service.lifecycle import JobStatus
from lrprobe.worker.runner import WorkerContext, run_job
from tests.service.api_support import start_api

transformers = pytest.importorskip("transformers")

pytestmark = [pytest.mark.slow]

VOCAB = 50


def _gpt2_archive(tmp_path: Path) -> bytes:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=32,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    folder = tmp_path / "tiny-gpt2"
    transformers.GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    archive = shutil.make_archive(str(tmp_path / "tiny-gpt2"), "gztar", tmp_path, "tiny-gpt2")
    return Path(archive).read_bytes()


def _tokens() -> bytes:
    """A stream with something to learn: each token is followed by the next id."""
    buffer = io.BytesIO()
    np.save(buffer, (np.arange(4096) % VOCAB).astype(np.uint16))
    return buffer.getvalue()


def test_a_save_pretrained_gpt2_tar_gz_uploaded_through_the_api_probes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate.upgrade(url)
    with start_api(url, tmp_path) as api:
        auth = api.auth(api.key_a)
        model = api.client.post(
            "/v1/models", headers=auth,
            files={"file": ("tiny-gpt2.tar.gz", _gpt2_archive(tmp_path))},
        )  # fmt: skip
        assert model.status_code == 201, model.text
        assert model.json()["format"] == "hf"
        data = api.client.post(
            "/v1/datasets", headers=auth, files={"file": ("tokens.npy", _tokens())}
        )
        assert data.status_code == 201, data.text
        body = {
            "model_id": model.json()["id"], "data": data.json()["uri"],
            "loss": "lm_cross_entropy", "block_size": 16, "device": "cpu",
            "budget": {"batches": 8, "batch_size": 16, "heldout_batches": 2},
        }  # fmt: skip
        submitted = api.client.post("/v1/jobs", headers=auth, json=body)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        assert [sent for sent, _ in api.queue.sent] == [job_id]

        # When a worker runs the job it was sent
        context = WorkerContext.create(api.settings, api.sessions)
        assert run_job(context, job_id) is JobStatus.SUCCEEDED, api.client.get(
            f"/v1/jobs/{job_id}", headers=auth
        ).json()["error"]

        # Then the recommendation has one group per GPT-2 module with parameters
        job = api.client.get(f"/v1/jobs/{job_id}", headers=auth).json()
        assert (job["status"], job["error"]) == ("succeeded", None)
        recommendation = api.client.get(f"/v1/jobs/{job_id}/recommendation", headers=auth)
        assert recommendation.status_code == 200, recommendation.text
        groups = [g["name"] for g in recommendation.json()["groups"]]
        assert "transformer.h.0.attn.c_attn" in groups and "transformer.wte" in groups
        assert all(g["lr"] > 0 for g in recommendation.json()["groups"] if g["lr"] is not None)
