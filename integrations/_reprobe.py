"""Re-probing while training goes on: probe before training, then every N steps or at given
milestones; apply each recommendation at the next step boundary; never stop training.

The framework callbacks (:mod:`lrprobe.integrations.lightning`,
:mod:`lrprobe.integrations.huggingface`) and the plain-loop :class:`Reprobe` share this engine.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lrprobe.integrations._probers import Prober, Result
from lrprobe.rules.regroup import unwrap

LogFn = Callable[[dict[str, float], int], None]
logger = logging.getLogger("lrprobe.integrations")


@dataclass(frozen=True)
class RateEvent:
    """One applied recommendation: the training step it was applied at, the step whose weights
    were probed, and the learning rate per group."""

    step: int
    probed_at: int
    lrs: dict[str, float]


@dataclass
class RateHistory:
    """The rates a run used, recommendation by recommendation (what the dashboard and
    :meth:`plot` show)."""

    events: list[RateEvent] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)

    def plot(self, ax: Any = None) -> Any:
        """Rate per group over training steps, as steps on a log axis (needs matplotlib)."""
        ax = _axes(ax)
        groups = sorted({g for e in self.events for g in e.lrs})
        for group in groups:
            steps = [e.step for e in self.events if group in e.lrs]
            rates = [e.lrs[group] for e in self.events if group in e.lrs]
            ax.step(steps, rates, where="post", marker="o", label=group)
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("learning rate")
        ax.set_title("lrprobe: recommended rate per group")
        if groups:
            ax.legend(fontsize="small")
        return ax


def _axes(ax: Any) -> Any:
    if ax is not None:
        return ax
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'lrprobe[plot]'") from None
    return plt.figure().add_subplot()


class Reprobe:
    """Re-probe during a plain training loop::

        with lrprobe.integrations.Reprobe(prober, model, optimizer, every=500) as rp:
            for batch in loader:
                ...  # forward, backward, optimizer.step(), scheduler.step()
                rp.step()

    Entering probes the starting weights (unless ``probe_first=False``) and applies the rates.
    After every ``every`` steps, and at each of ``milestones``, the prober runs: a
    :class:`~lrprobe.integrations.ServiceProbe` in a background thread while training goes on, a
    :class:`~lrprobe.integrations.LocalProbe` inline. A recommendation is applied at the next
    step boundary (:meth:`step`) with :meth:`~lrprobe.worker.newton.ProbeResult.apply`: groups
    keep their other hyperparameters and ``schedulers`` go on multiplying the new base rates.
    A probe that fails or runs past the prober's timeout is logged (the ``lrprobe.integrations``
    logger and :attr:`history`.failures) and the current rates stay. When training ends
    (:meth:`close`, or leaving the ``with`` block) a background probe still running is cancelled
    (a prober with a ``cancel()`` method, like ``ServiceProbe``, frees its service worker): its
    answer could no longer be applied. ``log(metrics, step)`` receives
    ``{"lrprobe/lr/<group>": rate}`` at each application.
    """

    def __init__(
        self,
        prober: Prober,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        every: int | None = None,
        milestones: Sequence[int] = (),
        schedulers: Iterable[Any] = (),
        probe_first: bool = True,
        log: LogFn | None = None,
    ) -> None:
        if every is not None and every < 1:
            raise ValueError("every must be a positive number of steps (or None)")
        self.prober = prober
        self.model = model
        self.optimizer = unwrap(optimizer)  # the torch optimizer inside a framework's wrapper
        self.every = every
        self.milestones = set(milestones)
        self.schedulers = list(schedulers)
        self.probe_first = probe_first
        self.log = log
        self.history = RateHistory()
        self.steps = 0
        self._lock = threading.Lock()
        self._pending: tuple[Result, int] | None = None
        self._thread: threading.Thread | None = None
        self._launched: int | None = None
        self._closed = False

    def __enter__(self) -> Reprobe:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, step: int = 0) -> None:
        """Probe the starting weights inline and apply the rates (with ``probe_first``)."""
        self.steps = step
        with self._lock:
            self._closed, self._pending = False, None
        if self.probe_first:
            self._launched = step
            self._probe_inline(step)

    def step(self) -> None:
        """Call after each optimizer step: counts it, then acts at this step boundary."""
        self.steps += 1
        self.boundary(self.steps)

    def boundary(self, step: int) -> None:
        """Apply a recommendation that has arrived, then start a probe if one is due."""
        self.steps = step
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self._apply(*pending, step)
        due = (self.every is not None and step > 0 and step % self.every == 0) or (
            step in self.milestones
        )
        if not due or step == self._launched:  # a boundary seen twice probes once
            return
        self._launched = step
        if not self.prober.background:
            self._probe_inline(step)
        elif self._closed:
            logger.info("training has ended: no new probe at step %d", step)
        elif not self.probing:
            snapshot = self._guard(step, lambda: self.prober.snapshot(self.model, self.optimizer))
            if snapshot is not None:
                self._thread = threading.Thread(
                    target=self._background, args=(snapshot, step), daemon=True,
                    name=f"lrprobe-reprobe-{step}",
                )  # fmt: skip
                self._thread.start()
        else:
            logger.info("a probe is still running: no new probe at step %d", step)

    @property
    def probing(self) -> bool:
        """Whether a background probe is running (also a cancelled one, until it stops)."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for a running background probe (its result is applied at the next boundary;
        after :meth:`close`, until it has stopped: soon when its prober could cancel it, else
        when it ends on its own)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        """Training is over: no background probe starts any more, nothing more arrives to be
        applied, and a background probe still running is cancelled if its prober can
        (``prober.cancel()``); its thread ends on its own (:meth:`wait` waits for it)."""
        with self._lock:
            self._closed, self._pending = True, None
        cancel = getattr(self.prober, "cancel", None)
        if self.probing and callable(cancel):
            try:
                cancel()
            except Exception:  # e.g. a client already closed: training is over regardless
                logger.debug("cancelling the probe under way failed", exc_info=True)

    # --- internals -----------------------------------------------------------------------

    def _probe_inline(self, step: int) -> None:
        snapshot = self._guard(step, lambda: self.prober.snapshot(self.model, self.optimizer))
        if snapshot is None:
            return
        result = self._guard(step, lambda: self.prober(snapshot, step))
        if result is not None:
            self._apply(result, step, step)

    def _background(self, snapshot: Any, step: int) -> None:
        try:
            result = self.prober(snapshot, step)
        except Exception as exc:  # a failed probe must never stop training
            if not self._closed:  # after close, a cancelled probe is no failure
                self._failed(step, exc)
            return
        with self._lock:
            if not self._closed:
                self._pending = (result, step)

    def _guard(self, step: int, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as exc:  # a failed probe must never stop training
            self._failed(step, exc)
            return None

    def _failed(self, step: int, exc: Exception) -> None:
        logger.debug("the probe at step %d failed", step, exc_info=exc)
        self._fail(step, f"{type(exc).__name__}: {exc}")

    def _fail(self, step: int, why: str) -> None:
        self.history.failures.append((step, why))
        logger.warning(
            "the probe at step %d gave no recommendation (%s); training goes on with the "
            "current rates",
            step,
            why,
        )

    def _apply(self, result: Result, probed_at: int, step: int) -> None:
        try:
            result.apply(self.optimizer, self.model, self.schedulers)
        except Exception as exc:  # e.g. a model that no longer matches: keep training
            self._fail(probed_at, f"could not apply the rates: {exc}")
            return
        lrs = {
            name: float(lr)
            for name, lr in result.lrs.items()
            if lr is not None and math.isfinite(lr)
        }
        self.history.events.append(RateEvent(step=step, probed_at=probed_at, lrs=lrs))
        if self.log is not None:
            self.log({f"lrprobe/lr/{name}": lr for name, lr in lrs.items()}, step)
