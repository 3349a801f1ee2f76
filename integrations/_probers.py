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
    """Turns a snapshot of the model and the live optimizer into a recommendation."""

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
        self._running: Job | None = None  # the job a background probe is waiting for
        # Set by cancel(), cleared by snapshot(): the start of every probe (see cancel).
        self._cancelled = threading.Event()

    def snapshot(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        self._cancelled.clear()
        weights = {
            k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()
        }
        return weights, job_optimizer(optimizer, model)

    def __call__(
        self, snapshot: tuple[dict[str, torch.Tensor], dict[str, Any]], step: int
    ) -> Result:
        from safetensors.torch import save_file

        weights, spec = snapshot
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
        self._running = job
        if self._cancelled.is_set():  # cancel() came before the job existed
            self.cancel()
        try:
            job.wait(timeout=self.timeout_s, progress=False)
        except WaitTimeout:
            # Its answer would come too late to matter: free the worker for the next probe.
            with contextlib.suppress(LrprobeError):
                job.cancel()
            raise
        finally:
            self._running = None
        return job.recommendation()

    def cancel(self) -> None:
        """Cancel the probe under way (training ended: its answer would not be applied): its
        job on the service, now or as soon as it is submitted; the waiting probe then ends
        with the job. The next probe (its :meth:`snapshot`) starts afresh."""
        self._cancelled.set()
        job = self._running
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
