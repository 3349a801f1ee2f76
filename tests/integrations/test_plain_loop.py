"""Re-probing in a plain training loop: before training, then in the background through the
embedded service while training goes on; a service that is down never stops training."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import torch

from lrprobe.client import Client
from lrprobe.integrations import LocalProbe, Reprobe, ServiceProbe
from tests.e2e.test_sdk_training import service  # noqa: F401  (the embedded-service fixture)
from tests.integrations.support import (
    ARCH_CONFIG,
    DATA,
    FAST_PROBE,
    check_rates,
    decay_groups,
    endless,
    loss_fn,
    mlp,
    warmup,
)  # fmt: skip


def test_a_local_probe_sets_per_layer_rates_before_training_and_keeps_the_schedule() -> None:
    model = mlp()
    optimizer = torch.optim.AdamW(decay_groups(model), lr=1e-3)
    scheduler = warmup(optimizer)
    logged: list[tuple[dict, int]] = []
    data = endless()
    with Reprobe(LocalProbe(loss_fn, endless(), **FAST_PROBE), model, optimizer,
                 milestones=[5], schedulers=[scheduler], log=lambda m, s: logged.append((m, s))
                 ) as rp:  # fmt: skip
        first = rp.history.events[0]
        check_rates(optimizer, model, first.lrs, scheduler)
        for _ in range(8):
            optimizer.zero_grad()
            loss_fn(model, next(data)).backward()
            optimizer.step()
            scheduler.step()
            rp.step()
    assert [(e.step, e.probed_at) for e in rp.history.events] == [(0, 0), (5, 5)]
    check_rates(optimizer, model, rp.history.events[1].lrs, scheduler)
    # the warm-up goes on multiplying the new base rates
    assert optimizer.param_groups[0]["lr"] == pytest.approx(
        optimizer.param_groups[0]["initial_lr"] * 9 / 20
    )
    assert [s for _, s in logged] == [0, 5]
    assert set(logged[0][0]) == {f"lrprobe/lr/{g}" for g in first.lrs}


def test_the_service_reprobes_in_the_background_and_the_rates_change_mid_run(
    service: Client,  # noqa: F811
) -> None:
    model = mlp()
    optimizer = torch.optim.AdamW(decay_groups(model), lr=1e-3)
    prober = ServiceProbe(service, data=DATA, arch="mlp", arch_config=ARCH_CONFIG,
                          budget={"batches": 8, "batch_size": 64}, run="plain-loop")  # fmt: skip
    data = endless()
    steps = 0
    with Reprobe(prober, model, optimizer, milestones=[3]) as rp:
        # train until the second recommendation has been applied (bounded)
        while len(rp.history.events) < 2 and steps < 20_000 and not rp.history.failures:
            optimizer.zero_grad()
            loss_fn(model, next(data)).backward()
            optimizer.step()
            rp.step()
            steps += 1
    assert rp.history.failures == []
    first, second = rp.history.events
    assert (first.step, second.probed_at) == (0, 3)
    assert second.step > second.probed_at  # training went on while the service probed
    check_rates(optimizer, model, second.lrs)
    assert len(prober.job_ids) == 2
    job = service.get_job(prober.job_ids[1]).data
    assert (job.label, job.run, job.run_step) == ("plain-loop · step 3", "plain-loop", 3)
    assert [j.id for j in service.list_jobs(run="plain-loop")] == prober.job_ids[::-1]


@pytest.mark.parametrize("when", ["before its job is submitted", "while it waits for its job"])
def test_a_probe_still_running_when_training_ends_is_cancelled_and_nothing_applied(
    service: Client,  # noqa: F811
    when: str,
) -> None:
    """Training ends one step after a probe was launched: the probe's job is cancelled on the
    service (its worker freed), nothing is applied and no failure is reported."""
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    prober = ServiceProbe(service, data=DATA, arch="mlp", arch_config=ARCH_CONFIG,
                          budget={"batches": 40, "batch_size": 64})  # fmt: skip
    data = endless()
    with Reprobe(prober, model, optimizer, milestones=[1], probe_first=False) as rp:
        optimizer.zero_grad()
        loss_fn(model, next(data)).backward()
        optimizer.step()
        rp.step()  # launches the probe of step 1 in the background
        assert rp.probing
        if when == "while it waits for its job":
            deadline = time.monotonic() + 60
            while not prober.job_ids and time.monotonic() < deadline:
                time.sleep(0.01)
            assert prober.job_ids
    rp.wait(120)
    assert not rp.probing
    assert rp.history.events == [] and rp.history.failures == []
    assert all(g["lr"] == 0.05 for g in optimizer.param_groups)
    assert [_final_status(service, job_id) for job_id in prober.job_ids] == ["cancelled"]


class _SlowProber:
    """A background prober without ``cancel()`` (the Protocol makes it optional)."""

    background = True

    def __init__(self) -> None:
        self.release = threading.Event()

    def snapshot(self, model, optimizer):  # type: ignore[no-untyped-def]
        return "weights"

    def __call__(self, snapshot, step):  # type: ignore[no-untyped-def]
        self.release.wait(30)
        raise AssertionError("a late answer must not be applied nor reported")


def test_a_prober_that_cannot_cancel_is_left_to_finish_and_its_answer_dropped() -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    prober = _SlowProber()
    with Reprobe(prober, model, optimizer, milestones=[1], probe_first=False) as rp:
        rp.step()
        assert rp.probing
    rp.step()  # a boundary after the end starts nothing
    prober.release.set()
    rp.wait(30)
    assert not rp.probing and rp.history.failures == [] and rp.history.events == []


def test_a_service_that_is_down_never_stops_training(caplog: pytest.LogCaptureFixture) -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    before = [dict(g) for g in optimizer.param_groups]
    data = endless()
    with Client("http://127.0.0.1:9", api_key="lrp_down", retries=0) as down:  # nothing listens
        prober = ServiceProbe(down, data=DATA, arch="mlp", arch_config=ARCH_CONFIG)
        with (
            caplog.at_level(logging.WARNING, "lrprobe.integrations"),
            Reprobe(prober, model, optimizer, every=2) as rp,
        ):
            for _ in range(6):
                optimizer.zero_grad()
                loss_fn(model, next(data)).backward()
                optimizer.step()
                rp.step()
                rp.wait(30)
    assert rp.steps == 6 and rp.history.events == []
    assert [step for step, _ in rp.history.failures] == [0, 2, 4, 6]
    assert "training goes on with the current rates" in caplog.text
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in before]


def test_a_probe_slower_than_its_timeout_is_logged_and_the_rates_stay(
    service: Client,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    prober = ServiceProbe(service, data=DATA, arch="mlp", arch_config=ARCH_CONFIG,
                          budget={"batches": 8, "batch_size": 64}, timeout_s=0.01)  # fmt: skip
    data = endless()
    with (
        caplog.at_level(logging.WARNING, "lrprobe.integrations"),
        Reprobe(prober, model, optimizer, every=2) as rp,
    ):
        for _ in range(4):
            optimizer.zero_grad()
            loss_fn(model, next(data)).backward()
            optimizer.step()
            rp.step()
            rp.wait(30)
    assert rp.steps == 4 and rp.history.events == []
    assert [step for step, _ in rp.history.failures] == [0, 2, 4]
    assert all(g["lr"] == 0.05 for g in optimizer.param_groups)
    assert "training goes on with the current rates" in caplog.text
    # the late jobs were cancelled, not left to occupy the service's worker: a running job
    # that was asked to stop ends at the worker's next check, so wait for each to be final
    statuses = {_final_status(service, job_id) for job_id in prober.job_ids}
    assert statuses <= {"cancelled", "succeeded"} and "cancelled" in statuses


def _final_status(client: Client, job_id: str, patience_s: float = 120.0) -> str:
    deadline = time.monotonic() + patience_s
    while True:
        status = client.get_job(job_id).data.status
        if status in {"succeeded", "failed", "cancelled"} or time.monotonic() > deadline:
            return status
        time.sleep(0.2)
