"""A GPT-2-small-class transformer probed end to end through ``lrprobe probe`` or the service.

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
    python -m bench.large --service             # the same probe as a job of the service

``--service`` probes the same folder through the service instead: ``lrprobe serve`` in a child
process (uvicorn, its Celery worker and reaper, SQLite in a temporary data dir, no external
server), the folder uploaded as an archive and the tokens as a dataset through the SDK
(``lrprobe.client.Client``), and one job with the same settings. Reported there: the wall time
from submit to the job's final state (and the uploads' and the queue's apart), the job's cost,
its groups, and the memory of the service's process tree, sampled from ``/proc`` once a second:
each process's peak (``VmHWM``, exact) by role, the probe's child among them, and the largest
sum of the tree's resident sets at one sample (a page shared by several processes counts in each
of them: an upper bound). A forked probe's resident set holds only the inherited pages it has
touched, so its peak is not quite the ``lrprobe probe`` child's, which holds all it loaded.
``tests/e2e/test_large_model_service.py`` runs the same path as a test at a reduced size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

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


def run_cli(
    args: argparse.Namespace, work: Path, folder: Path
) -> tuple[float, int, str, dict[str, Any]]:
    """The probe by ``lrprobe probe`` in a child: wall seconds, the child's peak RSS, its
    output and the result."""
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
    return seconds, peak, output, json.loads((work / "r.json").read_text())


# --- the service (--service) ------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
_SERVE = [sys.executable, "-c", "from lrprobe.cli.app import main; main()", "serve"]


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes (empty if it is gone). Read from /proc: psutil
    reports the resident size but not the kernel's high-water mark."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {
        line.split(":")[0]: int(line.split()[1]) * 1024
        for line in lines
        if line.startswith(("VmRSS:", "VmHWM:"))
    }


def _cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


class TreeMemory(threading.Thread):
    """Samples the memory of ``root`` and its descendants from ``/proc`` every ``interval``
    seconds: each process's peak (``VmHWM``, the kernel's exact high-water mark, read while the
    process lives) with its role, and the largest sum of the tree's ``VmRSS`` at one sample."""

    def __init__(self, root: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.tree_peak = 0
            self.peaks: dict[int, tuple[str, int]] = {}  # pid → (role, VmHWM bytes)
            self.samples = 0

    def run(self) -> None:
        while not self.done.is_set():
            self.sample()
            self.done.wait(self.interval)

    def stop(self) -> None:
        self.done.set()
        if self.is_alive():
            self.join()

    def _tree(self) -> dict[int, int]:
        """pid → parent pid, for the root and its descendants."""
        tree = {self.root: 0}
        try:
            children = psutil.Process(self.root).children(recursive=True)
        except psutil.Error:
            return tree
        for child in children:
            try:
                tree[child.pid] = child.ppid()
            except psutil.Error:
                continue
        return tree

    def sample(self) -> None:
        tree = self._tree()
        commands = {pid: _cmdline(pid) for pid in tree}
        total = 0
        seen: dict[int, tuple[str, int]] = {}
        for pid, parent in tree.items():
            status = _proc_status(pid)
            if not status:
                continue
            total += status.get("VmRSS", 0)
            seen[pid] = (_role(pid, self.root, commands[pid], commands.get(parent, "")),
                         status.get("VmHWM", 0))  # fmt: skip
        with self.lock:
            self.samples += 1
            self.tree_peak = max(self.tree_peak, total)
            for pid, (role, hwm) in seen.items():
                self.peaks[pid] = (role, max(hwm, self.peaks.get(pid, (role, 0))[1]))

    def by_role(self) -> dict[str, int]:
        """The largest single-process peak of each role, in bytes."""
        roles: dict[str, int] = {}
        with self.lock:
            for role, hwm in self.peaks.values():
                roles[role] = max(hwm, roles.get(role, 0))
        return roles


def _role(pid: int, root: int, command: str, parent_command: str) -> str:
    if pid == root:
        return "api"  # lrprobe serve: uvicorn and the app
    if "forkserver" in command:
        # The worker's probes are forked from its forkserver (lrprobe.worker.supervisor).
        return "probe" if "forkserver" in parent_command else "forkserver"
    if "celery" in command:
        return "worker"
    if "lrprobe.worker.reaper" in command:
        return "reaper"
    if "resource_tracker" in command:
        return "resource_tracker"
    return "other"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"lrprobe serve exited ({process.returncode}):\n{_tail(log)}")
        try:
            if httpx.get(f"{url}/healthz", timeout=5.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"lrprobe serve did not answer in {timeout:.0f} s:\n{_tail(log)}")


def _tail(*logs: Path, chars: int = 4000) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in logs if p.is_file()
    )


def run_service(
    args: argparse.Namespace, work: Path, folder: Path
) -> tuple[float, dict[str, Any], dict[str, Any]]:
    """The probe as a job of an embedded service; wall seconds from submit to the job's final
    state, the recommendation as a dict, and what else the service mode measures."""
    from lrprobe.client import Client

    data_dir, log = work / "service", work / "serve.log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    secret = "lrp_bench_" + secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRPROBE_")}
    env |= {"LRPROBE_DATA_DIR": str(data_dir), "LRPROBE_BOOTSTRAP_ADMIN_KEY": secret}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*_SERVE, "--port", str(port)], cwd=ROOT, env=env, stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    memory = TreeMemory(process.pid)
    try:
        _wait_healthy(url, process, log, timeout=300)
        memory.start()
        with Client(url, secret, timeout=600.0) as lrp:
            # `lrprobe serve` submits its example job (a small MLP on digits) on a fresh data
            # dir: let it finish so that it neither delays nor shares the CPU with this probe.
            for example in lrp.list_jobs():
                example.wait(timeout=1800, progress=False)
            memory.reset()
            started = time.perf_counter()
            model = lrp.upload_model(folder)
            dataset = lrp.upload_dataset(work / "tokens.npy")
            uploaded = time.perf_counter()
            budget: dict[str, Any] = {
                "batches": args.steps, "batch_size": args.batch_size,
                "calibration_steps": args.calibration_steps, "micro_batch": args.micro_batch,
                "time_limit_s": float(args.time_limit),
            }  # fmt: skip
            job = lrp.submit(
                model=model, data=dataset, loss="lm_cross_entropy", optimizer=args.optimizer,
                partition={"rule": args.partition, "max_groups": args.max_groups},
                budget=budget, block_size=args.context, device=args.device,
                label="bench.large",
            )  # fmt: skip
            submitted = time.perf_counter()
            job.wait(timeout=args.time_limit + 600, progress=False)
            seconds = time.perf_counter() - submitted
            memory.sample()  # the last state, before the tree is stopped
            logs = [log, *sorted((data_dir / "logs").glob("*.log"))]
            if job.status != "succeeded":
                raise SystemExit(f"job {job.id} {job.status}: {job.data.error}\n{_tail(*logs)}")
            result = job.recommendation().data.model_dump(mode="json")
            data = job.data
    finally:
        memory.stop()
        if process.poll() is None:
            process.terminate()  # serve stops its worker and reaper (and their lifelines end)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    roles = memory.by_role()
    queued = None
    if data.started_at is not None:
        queued = round((data.started_at - data.created_at).total_seconds(), 1)
    run = None
    if data.started_at is not None and data.finished_at is not None:
        run = round((data.finished_at - data.started_at).total_seconds(), 1)
    extra = {
        "job_id": data.id,
        "attempts": data.attempts,
        "upload_seconds": round(uploaded - started, 1),
        "queued_seconds": queued,
        "running_seconds": run,
        "model_format": model.format,
        "probe_peak_rss_bytes": roles.get("probe", -1),
        "tree_peak_rss_mib": round(memory.tree_peak / 2**20),
        "peak_rss_by_role_mib": {k: round(v / 2**20) for k, v in sorted(roles.items())},
        "memory_samples": memory.samples,
    }
    return seconds, result, extra


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
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/")
    parser.add_argument(
        "--service",
        action="store_true",
        help="probe as a job of an embedded service (lrprobe serve), not with lrprobe probe",
    )
    parser.add_argument(
        "--time-limit", type=float, default=3600.0, help="the job's time_limit_s (--service)"
    )
    args = parser.parse_args()
    if args.out is None:
        args.out = Path("bench/results") / ("large-service.json" if args.service else "large.json")

    service: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lrprobe-large-") as tmp:
        work = Path(tmp)
        np.save(work / "tokens.npy", stdlib_tokens(args.tokens))
        folder = work / "gpt2-small-class"
        num_params = save_model(args, folder)
        _, baseline, _ = run_child([sys.executable, "-c", _BASELINE, str(folder)])
        if args.service:
            seconds, result, service = run_service(args, work, folder)
            peak = service["probe_peak_rss_bytes"]
            output = (
                f"{service['model_format']} checkpoint, {num_params:,} parameters; job "
                f"{service['job_id']} succeeded (attempts {service['attempts']})"
            )
        else:
            seconds, peak, output, result = run_cli(args, work, folder)

    model_bytes = 4 * num_params
    state_bytes = _STATE_FLOATS.get(args.optimizer, 2) * model_bytes
    cost = result["cost"]
    peaks = [line.split()[1] for line in output.splitlines() if line.startswith("cuda_peak_")]
    cuda_peak = int(peaks[0]) if peaks else None
    known = peak > 0  # the probe's process was measured
    report: dict[str, Any] = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "mode": "service" if args.service else "cli",
        "peak_rss_of": (
            "the job's probe process, forked by the service's worker"
            if args.service
            else "the lrprobe probe child"
        ),
        "parameters": num_params,
        "groups": len(result["groups"]),
        "group_names": [g["name"] for g in result["groups"]],
        "wall_seconds": round(seconds, 1),
        "probe_seconds": round(cost["seconds"], 1),
        "fb_seconds": round(cost["fb_seconds"], 3),
        "fb_equivalents": round(cost["fb_equivalents"], 1),
        "passes": cost["passes"],
        "peak_rss_mib": round(peak / 2**20) if known else None,
        "baseline_rss_mib": round(baseline / 2**20),
        "model_plus_state_mib": round((model_bytes + state_bytes) / 2**20),
        "peak_over_model_plus_state": (
            round(peak / (model_bytes + state_bytes), 2) if known else None
        ),
        "peak_above_baseline_over_model_plus_state": (
            round((peak - baseline) / (model_bytes + state_bytes), 2) if known else None
        ),
        "cuda_peak_mib": None if cuda_peak is None else round(cuda_peak / 2**20),
        "cuda_peak_over_model_plus_state": (
            None if cuda_peak is None else round(cuda_peak / (model_bytes + state_bytes), 2)
        ),
        "scale": result["scale"],
        "notes": result["notes"],
    }
    if args.service:
        report["service"] = {k: v for k, v in service.items() if k != "probe_peak_rss_bytes"}
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
    for key, value in report.get("service", {}).items():
        print(f"{key:>40}: {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
