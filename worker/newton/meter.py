"""What a probe reports while it runs and what it cost: progress ticks, passes, timed
forward+backward passes (the probe's cost unit)."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from lrprobe.worker.newton.result import Cost
from lrprobe.worker.newton.summaries import Summaries

# What a progress tick counts: the fixed method's three phases, the trajectory method's two.
Phase = Literal["second_moment", "summaries", "check", "trajectory", "calibration"]


@dataclass(frozen=True)
class ProbeProgress:
    done: int
    total: int
    phase: Phase


class Meter:
    """Counts passes, times the forward+backward used as the cost unit, reports progress."""

    def __init__(
        self, callback: Callable[[ProbeProgress], None] | None, total: int, device: torch.device
    ) -> None:
        self.callback, self.total, self.done, self.device = callback, total, 0, device
        self.passes: Counter[str] = Counter()
        self.fb_times: list[float] = []

    def fb(self) -> Timer:
        self.passes["forward_backward"] += 1
        return Timer(self.fb_times, self.device)

    def count_summaries(self, s: Summaries, third_order: bool) -> None:
        self.passes["forward_backward"] += 1
        self.passes["hessian_vector"] += s.size + (1 if third_order else 0)
        if third_order:
            self.passes["third_order"] += s.size + 1

    def tick(self, phase: Phase) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(ProbeProgress(self.done, self.total, phase))

    def cost(self, started: float, batches: int) -> Cost:
        seconds = time.perf_counter() - started
        fb = sorted(self.fb_times)[len(self.fb_times) // 2]
        return Cost(
            batches=batches,
            passes=dict(self.passes),
            seconds=seconds,
            fb_seconds=fb,
            fb_equivalents=seconds / fb if fb > 0 else math.nan,
            device=str(self.device),
        )


class Timer:
    """Times one forward+backward; on CUDA it waits for the device, or it would time the launch."""

    def __init__(self, sink: list[float], device: torch.device) -> None:
        self.sink, self.device = sink, device

    def __enter__(self) -> None:
        self._sync()
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.sink.append(time.perf_counter() - self.start)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
