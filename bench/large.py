"""A GPT-2-small-class transformer probed end to end through ``lrprobe probe``.

The model is built from a ``transformers`` GPT-2 config and randomly initialised (12 blocks,
width 768, 12 heads: GPT-2 small; a byte vocabulary of 256, so 85 M parameters instead of 124 M,
the rest of GPT-2 small's being its 50,257-token embedding). It is saved as a Hugging Face
folder (``config.json`` + safetensors) and probed by the ``lrprobe probe`` command in a child
process, on byte tokens of the Python standard library's own source (offline, same bytes on
every machine with the same Python).

Reported: wall time; the probe's forward+backward equivalents (wall time over its median
training step) and its derivative passes; peak resident memory of the child against the
memory of the model plus the optimizer's state, and against a child that only imports the
same libraries and builds the model; the number of groups.

    python -m bench.large                       # the README's default settings
    python -m bench.large --steps 4 --calibration-steps 2   # a shorter run
    python -m bench.large --device cuda         # on a GPU

The service runs the same pipeline (``lrprobe.worker.pipeline.run_probe``) on an uploaded
archive of the same folder; ``tests/e2e/test_large_model_service.py`` probes it through the
HTTP API at a reduced size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# Bytes per parameter of the optimizer's state (float32): AdamW keeps two moments, momentum one.
_STATE_FLOATS = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}


def stdlib_tokens(limit: int) -> np.ndarray:
    """The first ``limit`` bytes of the standard library's ``.py`` files, in sorted order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts:
            continue
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= limit:
            break
    return np.frombuffer(b"".join(chunks)[:limit], dtype=np.uint8).astype(np.int64)


def save_model(args: argparse.Namespace, folder: Path) -> int:
    import torch
    import transformers

    torch.manual_seed(args.seed)
    config = transformers.GPT2Config(
        n_layer=args.layers, n_head=args.heads, n_embd=args.width, vocab_size=256,
        n_positions=args.context, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(folder, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def run_child(command: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS in bytes (this child's), and stdout+stderr of ``command``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if peak <= before * 1024:
        peak = -1  # an earlier, larger child holds the maximum: unknown for this one
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])}… failed:\n{done.stdout}\n{done.stderr}")
    return seconds, peak, done.stdout + done.stderr


# The probe's child: on CUDA it also reports the device's peak allocated memory when it exits
# (the CLI ends through sys.exit, which runs atexit handlers).
_PROBE = """
import atexit, sys, torch
def _cuda_peak():
    if torch.cuda.is_initialized():
        print("cuda_peak_bytes", torch.cuda.max_memory_allocated(), file=sys.stderr)
atexit.register(_cuda_peak)
from lrprobe.cli.app import main
main()
"""

_BASELINE = """
import sys, torch, transformers
import lrprobe.cli.app, lrprobe.worker.pipeline
from lrprobe.worker.intake.checkpoints.loading import load_checkpoint
load_checkpoint(sys.argv[1])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    # Defaults sized to finish in under 30 minutes on 2 shared CPU cores (README, Large models).
    parser.add_argument("--context", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--batch-size", type=int, default=4, help="sequences per batch")
    parser.add_argument("--micro-batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=8, help="trajectory steps (--batches)")
    parser.add_argument("--calibration-steps", type=int, default=4)
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--partition", default="layer")
    parser.add_argument("--max-groups", type=int, default=None, help="default: automatic")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=2_000_000, help="bytes of source")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/large.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lrprobe-large-") as tmp:
        work = Path(tmp)
        np.save(work / "tokens.npy", stdlib_tokens(args.tokens))
        folder = work / "gpt2-small-class"
        num_params = save_model(args, folder)
        _, baseline, _ = run_child([sys.executable, "-c", _BASELINE, str(folder)])
        command = [
            sys.executable, "-c", _PROBE, "probe",
            "--model", str(folder),
            "--data", str(work / "tokens.npy"), "--block-size", str(args.context),
            "--loss", "lm_cross_entropy", "--optimizer", args.optimizer,
            "--partition", args.partition, "--batches", str(args.steps),
            "--batch-size", str(args.batch_size), "--calibration-steps",
            str(args.calibration_steps), "--device", args.device, "--json", str(work / "r.json"),
        ]  # fmt: skip
        if args.micro_batch:
            command += ["--micro-batch", str(args.micro_batch)]
        if args.max_groups:
            command += ["--max-groups", str(args.max_groups)]
        seconds, peak, output = run_child(command)
        result = json.loads((work / "r.json").read_text())

    model_bytes = 4 * num_params
    state_bytes = _STATE_FLOATS.get(args.optimizer, 2) * model_bytes
    cost = result["cost"]
    peaks = [line.split()[1] for line in output.splitlines() if line.startswith("cuda_peak_")]
    cuda_peak = int(peaks[0]) if peaks else None
    report: dict[str, Any] = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "parameters": num_params,
        "groups": len(result["groups"]),
        "group_names": [g["name"] for g in result["groups"]],
        "wall_seconds": round(seconds, 1),
        "probe_seconds": round(cost["seconds"], 1),
        "fb_seconds": round(cost["fb_seconds"], 3),
        "fb_equivalents": round(cost["fb_equivalents"], 1),
        "passes": cost["passes"],
        "peak_rss_mib": round(peak / 2**20),
        "baseline_rss_mib": round(baseline / 2**20),
        "model_plus_state_mib": round((model_bytes + state_bytes) / 2**20),
        "peak_over_model_plus_state": round(peak / (model_bytes + state_bytes), 2),
        "peak_above_baseline_over_model_plus_state": round(
            (peak - baseline) / (model_bytes + state_bytes), 2
        ),
        "cuda_peak_mib": None if cuda_peak is None else round(cuda_peak / 2**20),
        "cuda_peak_over_model_plus_state": (
            None if cuda_peak is None else round(cuda_peak / (model_bytes + state_bytes), 2)
        ),
        "scale": result["scale"],
        "notes": result["notes"],
    }
    print(output.strip().splitlines()[0])
    for key in ("parameters", "groups", "wall_seconds", "probe_seconds", "fb_seconds"):
        print(f"{key:>40}: {report[key]}")
    for key in ("fb_equivalents", "peak_rss_mib", "baseline_rss_mib", "model_plus_state_mib"):
        print(f"{key:>40}: {report[key]}")
    for key in (
        "peak_over_model_plus_state",
        "peak_above_baseline_over_model_plus_state",
        "cuda_peak_mib",
        "cuda_peak_over_model_plus_state",
    ):
        print(f"{key:>40}: {report[key]}")
    print(f"{'passes':>40}: {report['passes']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
