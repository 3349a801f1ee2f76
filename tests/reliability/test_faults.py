"""Faults against the production stack (PostgreSQL, Redis, Celery workers, the reaper, the API
under uvicorn), on private servers that these tests kill and restart.

Leases are 3 s and the reaper runs every second here (production: lease 60 s, reaper every
30 s). Tests assert outcomes and the order of events, never how long something took.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from sqlalchemy import select

from lrprobe.service.artifacts import ArtifactStore
from lrprobe.service.broker import send_job
from lrprobe.service.models import JobEvent
from lrprobe.worker.intake.checkpoints.architectures.mlp import MLP, MLPConfig
from lrprobe.worker.intake.checkpoints.loading import save_checkpoint
from tests.reliability.conftest import LEASE, Stack
from tests.reliability.servers import wait_until
from tests.support.jobs import IRIS_MLP, make_job

pytestmark = [
    pytest.mark.slow,
    # kombu 5.7's SQLAlchemy transport declares its models with a loader strategy that
    # SQLAlchemy 2.1 deprecates (imported with Celery's transports); not ours to change.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning"),
]

# A probe of several seconds on one CPU thread (as in tests/e2e).
SLOW_MODEL = {"sizes": [64, 256, 256, 10], "activation": "tanh"}
SLOW = {"data": "builtin://digits", "config": SLOW_MODEL,
        "budget": {"batches": 256, "batch_size": 512}}  # fmt: skip
# Far past the time-limit test's 2 s on any CPU: the SLOW model's probe takes under 3 s on a
# fast one (its job once finished inside the limit), this one 15 s there.
TOO_SLOW_MODEL = {"sizes": [64, 1024, 1024, 10], "activation": "tanh"}
FAST_BUDGET = {"batches": 4, "batch_size": 16, "heldout_batches": 1}
# 74 M parameters (296 MB): the weights alone, with their gradients and the probe's saved
# checkpoint, are beyond the worker's memory cap whatever the micro-batch (the probe retries
# smaller micro-batches before it gives up, so a large activation alone no longer fails).
HUGE_MODEL = {"sizes": [64, 1_000_000, 10], "activation": "tanh"}
# The worker's address-space cap in the out-of-memory test: its own ~1.1 GB plus 400 MB.
WORKER_ADDRESS_SPACE = 1_500_000_000


def _running(stack: Stack, job_id: str) -> bool:
    job = stack.job(job_id)
    assert job.status in ("queued", "running"), (job.status, job.error_code)
    return job.progress_done > 0


def _events(stack: Stack, job_id: str) -> list[JobEvent]:
    with stack.sessions() as session:
        return list(
            session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        )


def _nan_checkpoint(stack: Stack) -> str:
    torch.manual_seed(0)
    model = MLP(MLPConfig(**IRIS_MLP))
    with torch.no_grad():
        model.layers[0].bias[0] = float("nan")  # type: ignore[index]
    path = stack.tmp / "nan.safetensors"
    save_checkpoint(model, path, "mlp", IRIS_MLP)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    ArtifactStore(stack.settings.resolved_artifact_url).put(path, sha)
    return sha


def _upload(client: httpx.Client, key: str, config: dict[str, Any], tmp: Path) -> str:
    torch.manual_seed(0)
    path = tmp / f"upload-{len(config['sizes'])}-{config['sizes'][1]}.safetensors"
    save_checkpoint(MLP(MLPConfig(**config)), path, "mlp", config)
    response = client.post(
        "/v1/models",
        headers={"Authorization": f"Bearer {key}"},
        files={"file": (path.name, path.read_bytes())},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["code"] == code and body["detail"]


def test_a_killed_worker_s_job_is_requeued_once_its_lease_expires_and_runs_once(
    stack: Stack,
) -> None:
    worker = stack.worker()
    stack.reaper()
    job_id = make_job(stack.sessions, stack.checkpoint(SLOW_MODEL), **SLOW)
    send_job(stack.celery, job_id)
    wait_until(lambda: _running(stack, job_id), 90, "probe progress")
    # When the worker is killed mid-probe and a fresh one starts
    stack.processes.kill9(worker)
    killed = time.monotonic()
    lease_end = stack.job(job_id).lease_expires_at  # no one renews it any more
    assert lease_end is not None
    stack.worker()
    # Then the reaper requeues the job, and the restarted worker finishes it, exactly once
    [job] = stack.wait_final([job_id], 120)
    assert (job.status, job.attempts) == ("succeeded", 2)
    assert stack.recommendations([job_id]) == {job_id: 1}
    # in this order: the dead worker's claim, its lease running out, the reaper's requeue, the
    # new worker's claim, the result
    statuses = [e for e in _events(stack, job_id) if e.kind == "status"]
    assert [(e.data["status"], e.data.get("reason")) for e in statuses] == [
        ("running", None), ("queued", "requeued"), ("running", None), ("succeeded", None),
    ]  # fmt: skip
    first, requeued, second, _ = statuses
    assert first.data["worker"] != second.data["worker"]
    assert requeued.at >= lease_end
    print(f"\nkill -9 → requeued {(requeued.at - lease_end).total_seconds():.1f} s after the "
          f"lease ran out, succeeded after {time.monotonic() - killed:.1f} s")  # fmt: skip


def test_jobs_queued_in_a_redis_that_restarts_empty_all_finish(stack: Stack) -> None:
    stack.worker()
    stack.reaper()
    busy = make_job(stack.sessions, stack.checkpoint(SLOW_MODEL), **SLOW)
    send_job(stack.celery, busy)
    wait_until(lambda: _running(stack, busy), 90, "the worker to be busy")
    sha = stack.checkpoint()
    queued = [make_job(stack.sessions, sha, budget=FAST_BUDGET) for _ in range(5)]
    for job_id in queued:
        send_job(stack.celery, job_id)
    assert stack.redis.keys() > 0  # the messages wait in Redis
    # When Redis dies and comes back empty (no persistence)
    stack.redis.kill()
    stack.redis.start()
    assert stack.redis.keys() == 0
    # Then the reaper re-sends every job still queued, and each finishes exactly once
    jobs = stack.wait_final([busy, *queued], 120)
    assert [(j.status, j.attempts) for j in jobs] == [("succeeded", 1)] * 6
    assert stack.recommendations([busy, *queued]) == dict.fromkeys([busy, *queued], 1)


def test_a_postgres_outage_gives_503_problems_and_everything_resumes_with_nothing_lost(
    stack: Stack,
) -> None:
    client = stack.start_api()
    key = stack.key()
    auth = {"Authorization": f"Bearer {key}"}
    stack.worker()
    stack.worker()
    stack.reaper()
    model = _upload(client, key, IRIS_MLP, stack.tmp)
    slow_model = _upload(client, key, SLOW_MODEL, stack.tmp)
    body = {"model_id": model, "data": "builtin://iris", "loss": "cross_entropy",
            "budget": FAST_BUDGET, "device": "cpu"}  # fmt: skip
    first = client.post("/v1/jobs", headers=auth, json=body).json()["id"]
    slow = client.post(
        "/v1/jobs", headers=auth,
        json=body | {"model_id": slow_model, "data": "builtin://digits", "budget": SLOW["budget"]},
    ).json()["id"]  # fmt: skip
    wait_until(lambda: _running(stack, slow), 90, "the slow probe")
    # A job committed just before the outage whose message reaches an idle worker during it
    pending = make_job(stack.sessions, stack.checkpoint(), budget=FAST_BUDGET)

    # When PostgreSQL stops (connections cut, new ones refused)
    stack.postgres.stop()
    down = time.monotonic()
    send_job(stack.celery, pending)
    try:
        # Then the API answers 503 problem+json at once, for reads and writes alike
        for method, path, payload in [
            ("GET", f"/v1/jobs/{first}", None),
            ("GET", "/v1/jobs", None),
            ("POST", "/v1/jobs", body),
        ]:
            response = client.request(method, path, headers=auth, json=payload)
            _assert_problem(response, 503, "service_unavailable")
            assert response.headers["retry-after"] == "5"
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200
        time.sleep(max(0.0, 2 * LEASE - (time.monotonic() - down)))  # leases run out meanwhile
    finally:
        stack.postgres.start()

    # and when it is back, the API serves, and every job finishes exactly once
    wait_until(lambda: client.get(f"/v1/jobs/{first}", headers=auth).status_code == 200, 30,
               "the API to recover")  # fmt: skip
    after = client.post("/v1/jobs", headers=auth, json=body)
    assert after.status_code == 202, after.text
    ids = [first, slow, pending, after.json()["id"]]
    jobs = stack.wait_final(ids, 120)
    assert [j.status for j in jobs] == ["succeeded"] * 4, [(j.error_code, j.error_detail)
                                                           for j in jobs]  # fmt: skip
    assert stack.recommendations(ids) == dict.fromkeys(ids, 1)
    # The idle worker waited for the database instead of dropping the message
    assert jobs[2].attempts == 1
    assert "raised unexpected" not in stack.processes.logs()


def test_time_limit_nan_and_out_of_memory_fail_with_codes_and_the_worker_goes_on(
    stack: Stack,
) -> None:
    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit (util-linux) to cap the worker's memory")
    # Given one worker with a 2 s default time limit and an address-space cap
    worker = stack.worker(
        ("prlimit", f"--as={WORKER_ADDRESS_SPACE}", "--"), LRPROBE_DEFAULT_TIME_LIMIT_SECONDS="2"
    )
    generous = {"time_limit_s": 120.0}
    too_slow = make_job(
        stack.sessions, stack.checkpoint(TOO_SLOW_MODEL), **SLOW | {"config": TOO_SLOW_MODEL}
    )
    nan = make_job(stack.sessions, _nan_checkpoint(stack), budget=FAST_BUDGET | generous)
    oom = make_job(
        stack.sessions, stack.checkpoint(HUGE_MODEL), data="builtin://digits", config=HUGE_MODEL,
        budget={"batches": 4, "batch_size": 1024, "heldout_batches": 1} | generous,
    )  # fmt: skip
    fine = make_job(stack.sessions, stack.checkpoint(), budget=FAST_BUDGET | generous)
    for job_id in (too_slow, nan, oom, fine):
        send_job(stack.celery, job_id)
    jobs = stack.wait_final([too_slow, nan, oom, fine], 120)
    codes = [(j.status, j.error_code) for j in jobs]
    assert codes == [
        ("failed", "time_limit_exceeded"),
        ("failed", "non_finite_loss"),
        ("failed", "out_of_memory"),
        ("succeeded", None),
    ], f"{[(j.error_code, j.error_detail) for j in jobs]}\n{stack.processes.logs()}"
    # each failure says what to do
    assert "raise budget.time_limit_s" in (jobs[0].error_detail or "")
    assert "non-finite" in (jobs[1].error_detail or "")
    assert "lower budget.batch_size" in (jobs[2].error_detail or "")
    # and the same worker process ran all four, and is still up
    assert worker.poll() is None
    owners = {e.data["worker"].split(":")[1]
              for j in jobs for e in _events(stack, j.id) if "worker" in e.data}  # fmt: skip
    assert len(owners) == 1


def test_fifty_jobs_submitted_at_once_with_two_workers_each_finish_exactly_once(
    stack: Stack,
) -> None:
    client = stack.start_api()
    key = stack.key()
    auth = {"Authorization": f"Bearer {key}"}
    stack.worker()
    stack.worker()
    stack.reaper()
    model = _upload(client, key, IRIS_MLP, stack.tmp)
    body = {"model_id": model, "data": "builtin://iris", "loss": "cross_entropy",
            "budget": FAST_BUDGET, "device": "cpu"}  # fmt: skip

    def submit(n: int) -> httpx.Response:
        return client.post("/v1/jobs", headers=auth, json=body | {"seed": n})

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(submit, range(50)))
    assert [r.status_code for r in responses] == [202] * 50
    ids = [r.json()["id"] for r in responses]
    assert len(set(ids)) == 50
    jobs = stack.wait_final(ids, 150)
    assert [(j.status, j.attempts) for j in jobs] == [("succeeded", 1)] * 50
    assert stack.recommendations(ids) == dict.fromkeys(ids, 1)
    # both workers took part
    owners = {e.data["worker"].split(":")[1]
              for j in ids for e in _events(stack, j) if "worker" in e.data}  # fmt: skip
    assert len(owners) == 2
