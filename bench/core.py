"""Cost of `summaries` in forward+backward equivalents, and its peak memory.

Each method run is paired with a plain forward+backward (FB) on the same batch in the same
process, and the table reports the median of the per-pair ratios: absolute times on a shared
machine drift, ratios measured back to back do not (much). Peak memory is measured in a fresh
subprocess per configuration (peak RSS above the process's resident size before the call; CUDA:
peak allocated).

    python -m bench.core                 # the README table (MLP and CNN, S = 4, 8, 16, 32)
    python -m bench.core --quick         # a smoke run
    python -m bench.core --device cuda   # on a GPU
    python -m bench.core --device cuda --models mlp --width 4096 --batch 2048   # GPU-sized
    python -m bench.core --quick --models mlp --sizes 2 --no-memory   # the test suite's smoke run
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lrprobe.worker.newton import partition, summaries
from lrprobe.worker.newton.summaries import _dot

METHODS = ("gH", "gHd3", "published_gH", "published_gHd3")


@dataclass(frozen=True)
class Config:
    model: str
    S: int
    width: int
    batch: int


def build(config: Config, device: str) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    if config.model == "mlp":  # tanh MLP 784-(width × (S−1))-10: S layers = S groups
        layers: list[nn.Module] = [nn.Linear(784, config.width), nn.Tanh()]
        for _ in range(config.S - 2):
            layers += [nn.Linear(config.width, config.width), nn.Tanh()]
        layers.append(nn.Linear(config.width, 10))
        x = torch.randn(config.batch, 784)
    else:  # ReLU CNN on 3×16×16 inputs: S − 1 conv layers + a linear head
        layers = [nn.Conv2d(3, config.width, 3, padding=1), nn.ReLU()]
        for _ in range(config.S - 2):
            layers += [nn.Conv2d(config.width, config.width, 3, padding=1), nn.ReLU()]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(config.width, 10)]
        x = torch.randn(config.batch, 3, 16, 16)
    model = nn.Sequential(*layers).to(device)
    return model, (x.to(device), torch.randint(0, 10, (config.batch,), device=device))


def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def published(model: nn.Module, batch, direction, groups, third_order: bool) -> None:  # type: ignore[no-untyped-def]
    """The published algorithm's pass structure (grnewt `compute_Hg`), re-implemented: every row
    is taken with create_graph=True and all of its entries keep their graph."""
    params = dict(model.named_parameters())
    tensors = [[params[n] for n in g.param_names] for g in groups]
    dirs = [[direction[n] for n in g.param_names] for g in groups]
    flat = [p for grp in tensors for p in grp]
    grads = torch.autograd.grad(loss_fn(model, batch), flat, create_graph=True)
    starts = [0]
    for grp in tensors:
        starts.append(starts[-1] + len(grp))
    gbar = [_dot(grads[starts[i] : starts[i + 1]], dirs[i]) for i in range(len(groups))]
    for i in range(len(groups)):
        row = torch.autograd.grad(gbar[i], flat[starts[i] :], retain_graph=True, create_graph=True)
        entries = [
            _dot(row[starts[j] - starts[i] : starts[j + 1] - starts[i]], dirs[j])
            for j in range(i, len(groups))
        ]
        if third_order:
            torch.autograd.grad(entries[0], tensors[i], retain_graph=True)


def runners(config: Config, device: str) -> dict[str, Callable[[], None]]:
    model, batch = build(config, device)
    groups = partition(model, "layer")
    params = dict(model.named_parameters())
    u = {n: torch.randn_like(p) for n, p in params.items()}
    flat = list(params.values())
    return {
        "fb": lambda: torch.autograd.grad(loss_fn(model, batch), flat) and None,
        "gH": lambda: summaries(model, loss_fn, batch, u, groups, third_order=False) and None,
        "gHd3": lambda: summaries(model, loss_fn, batch, u, groups, third_order=True) and None,
        "published_gH": lambda: published(model, batch, u, groups, third_order=False),
        "published_gHd3": lambda: published(model, batch, u, groups, third_order=True),
    }


def _timed(fn: Callable[[], None], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def ratios(config: Config, device: str, repeats: int) -> dict[str, float]:
    run = runners(config, device)
    for fn in run.values():  # warm-up: allocator, kernels, autograd caches
        fn()
    out = {"fb_ms": 1e3 * statistics.median(_timed(run["fb"], device) for _ in range(5))}
    for method in METHODS:
        pairs = []
        for _ in range(repeats):
            fb = _timed(run["fb"], device)
            pairs.append(_timed(run[method], device) / fb)
        out[method] = statistics.median(pairs)
    return out


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def peak_memory(config: Config, device: str, method: str) -> float:
    """Peak memory (MiB) of one call above what the process held just before it, measured in a
    fresh interpreter. CPU: resident size sampled every millisecond during the call (the
    process's lifetime peak, ru_maxrss, is dominated by importing torch); CUDA: peak allocated.
    """
    code = (
        "import json,torch; from bench.core import *; "
        f"c=Config(**{config.__dict__!r}); r=runners(c,{device!r}); "
        f"print(json.dumps(measure_peak(r[{method!r}], {device!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return float(out.strip().splitlines()[-1])


def measure_peak(fn: Callable[[], None], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    before = _rss_bytes()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return (max(peak[0], _rss_bytes()) - before) / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="small models, few repeats")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--models", nargs="+", choices=["mlp", "cnn"], default=["mlp", "cnn"])
    parser.add_argument(
        "--sizes", nargs="+", type=int, help="numbers of groups S (default: 4 8 16 32; quick: 4 8)"
    )
    parser.add_argument("--width", type=int, help="override the models' width (GPU: try 4096)")
    parser.add_argument("--batch", type=int, help="override the batch size")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))
    sizes = args.sizes or ((4, 8) if args.quick else (4, 8, 16, 32))
    configs = []
    if "mlp" in args.models:
        width, batch = (64, 64) if args.quick else (512, 256)
        configs += [Config("mlp", S, args.width or width, args.batch or batch) for S in sizes]
    if "cnn" in args.models:
        width, batch = (8, 16) if args.quick else (16, 64)
        configs += [Config("cnn", S, args.width or width, args.batch or batch) for S in sizes]
    repeats = 2 if args.quick else args.repeats
    header = (
        "| model | S | FB (ms) | ḡ,H̄ (FB) | ḡ,H̄ / S | ḡ,H̄,d3 (FB) | ḡ,H̄,d3 / S "
        "| published ḡ,H̄ / S | published ḡ,H̄,d3 / S | peak MiB ḡ,H̄,d3 (published) |"
    )
    print(f"device: {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(header)
    print("|---" * 10 + "|")
    rows = []
    for config in configs:
        r = ratios(config, args.device, repeats)
        mem = (
            (
                peak_memory(config, args.device, "gHd3"),
                peak_memory(config, args.device, "published_gHd3"),
            )
            if not args.no_memory
            else (float("nan"), float("nan"))
        )
        S = config.S
        rows.append({"config": config.__dict__, **r, "peak_mib": mem})
        label = f"{config.model} w{config.width} b{config.batch}"
        print(
            f"| {label} | {S} | {r['fb_ms']:.1f} | {r['gH']:.1f} | {r['gH'] / S:.2f} "
            f"| {r['gHd3']:.1f} | {r['gHd3'] / S:.2f} | {r['published_gH'] / S:.2f} "
            f"| {r['published_gHd3'] / S:.2f} | {mem[0]:.0f} ({mem[1]:.0f}) |",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
