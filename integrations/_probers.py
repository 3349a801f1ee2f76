"""Where a recommendation comes from during training: a local probe on this machine, or a job
on an lrprobe service (the checkpoint is uploaded and the service's workers probe it while
training goes on)."""

from __future__ import annotations

import contextlib
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from lrprobe.client import Client, Job, LrprobeError, Recommendation, WaitTimeout
from lrprobe.worker.newton import LossFn, ProbeResult, from_torch, probe
from lrprobe.worker.newton.directions import OPTIONS

Result = ProbeResult | Recommendation


class Prober(Protocol):
    """Turns a snapshot of the model and the live optimizer into a recommendation.

    A background prober may also define ``cancel()``: :class:`~lrprobe.integrations.Reprobe`
    calls it when training ends with a probe still running (``ServiceProbe`` cancels its job
    on the service)."""

    background: bool  # True: run in a thread while training goes on

    def snapshot(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> Any:
        """What the probe needs, taken at a step boundary (training changes it afterwards)."""
        ...

    def __call__(self, snapshot: Any, step: int) -> Result: ...


class LocalProbe:
    """Probe on this machine with :func:`lrprobe.worker.newton.probe`, inline (training waits):
    the probe needs the same device as training, so there is nothing to overlap with.

    ``loss_fn(model, batch)`` and ``batches`` (an endless iterator of training batches) are what
    ``probe`` takes; ``probe_kwargs`` go to it as well (``steps=``, ``partition=``, …).
    """

    background = False

    def __init__(self, loss_fn: LossFn, batches: Iterable[Any], **probe_kwargs: Any) -> None:
        self.loss_fn = loss_fn
        self.batches = batches
        self.probe_kwargs = probe_kwargs

    def snapshot(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        return model, optimizer  # inline: the probe leaves both untouched

    def __call__(self, snapshot: tuple[nn.Module, torch.optim.Optimizer], step: int) -> Result:
        model, optimizer = snapshot
        return probe(model, self.loss_fn, self.batches, optimizer=optimizer, **self.probe_kwargs)


class ServiceProbe:
    """Probe on an lrprobe service through :class:`lrprobe.client.Client`, in the background.

    At each re-probe the model's weights are saved (safetensors) and uploaded with
    ``arch``/``arch_config`` (a registry architecture the service knows), and a job is
    submitted for ``data`` and ``loss`` with the live optimizer's hyperparameters, group by
    group. ``run`` labels the jobs of one training run (the dashboard plots the run's rates
    over its steps; ``client.list_jobs(run=...)`` lists them). ``timeout_s`` bounds the wait;
    a job past it is cancelled, and so is the job running when training ends (:meth:`cancel`).
    """

    background = True

    def __init__(
        self,
        client: Client,
        *,
        data: str,
        loss: str = "cross_entropy",
        arch: str,
        arch_config: Mapping[str, Any] | None = None,
        budget: Mapping[str, Any] | None = None,
        partition: str | Mapping[str, Any] = "layer",
        run: str | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        self.client = client
        self.data = data
        self.loss = loss
        self.arch = arch
        self.arch_config = dict(arch_config or {})
        self.budget = dict(budget or {})
        self.partition = partition
        self.run = run
        self.timeout_s = timeout_s
        self.job_ids: list[str] = []
        # The probes under way, each with its own ticket (see cancel).
        self._tickets: set[_Ticket] = set()
        self._lock = threading.Lock()

    def snapshot(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any], _Ticket]:
        weights = {
            k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()
        }
        ticket = _Ticket()
        with self._lock:
            self._tickets.add(ticket)
        return weights, job_optimizer(optimizer, model), ticket

    def __call__(
        self, snapshot: tuple[dict[str, torch.Tensor], dict[str, Any], _Ticket], step: int
    ) -> Result:
        weights, spec, ticket = snapshot
        try:
            return self._probe(weights, spec, ticket, step)
        finally:
            with self._lock:
                self._tickets.discard(ticket)

    def _probe(
        self, weights: dict[str, torch.Tensor], spec: dict[str, Any], ticket: _Ticket, step: int
    ) -> Result:
        from safetensors.torch import save_file

        with tempfile.TemporaryDirectory(prefix="lrprobe-") as folder:
            path = Path(folder) / f"step-{step}.safetensors"
            save_file(weights, str(path))
            uploaded = self.client.upload_model(path, arch=self.arch, arch_config=self.arch_config)
        label = f"{self.run} · step {step}" if self.run else f"step {step}"
        job = self.client.submit(
            model=uploaded, data=self.data, loss=self.loss, optimizer=spec,  # type: ignore[arg-type]
            partition=self.partition, budget=self.budget or None, label=label, run=self.run,
            run_step=step,
        )  # fmt: skip
        self.job_ids.append(job.id)
        ticket.job = job
        if ticket.cancelled.is_set():  # cancel() came before the job existed
            ticket.cancel()
        try:
            job.wait(timeout=self.timeout_s, progress=False)
        except WaitTimeout:
            # Its answer would come too late to matter: free the worker for the next probe.
            ticket.cancel()
            raise
        return job.recommendation()

    def cancel(self) -> None:
        """Cancel every probe under way (training ended: their answers would not be applied):
        each one's job on the service, now or as soon as it is submitted; a waiting probe then
        ends with its job. Probes snapshotted afterwards are not affected."""
        with self._lock:
            tickets = list(self._tickets)
        for ticket in tickets:
            ticket.cancelled.set()
            ticket.cancel()


class _Ticket:
    """One probe of a :class:`ServiceProbe`: whether it was cancelled, and its job once
    submitted (set by the probe's thread, read by the one that cancels)."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.job: Job | None = None

    def cancel(self) -> None:
        job = self.job
        if job is not None:
            with contextlib.suppress(LrprobeError):
                job.cancel()


def job_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
    """The job spec's ``optimizer`` for a live optimizer over ``model``: its kind and, group by
    group, its hyperparameters (the service probes from fresh optimizer state)."""
    spec, _ = from_torch(optimizer, model)
    options = set(OPTIONS.get(spec.name, {}))
    body = {k: v for k, v in spec.to_dict().items() if k not in options and k != "param_groups"}
    body["options"] = {k: v for k, v in spec.options.items()}
    body["param_groups"] = [
        {
            "params": list(g.params),
            **{k: list(v) if isinstance(v, tuple) else v for k, v in g.overrides.items()
               if k not in options},
            "options": {k: v for k, v in g.overrides.items() if k in options},
        }
        for g in spec.param_groups
    ]  # fmt: skip
    return body
