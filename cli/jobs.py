"""``lrprobe submit`` and ``lrprobe jobs ls|show|wait|cancel|export``: probes run by the service
(``--url``/``$LRPROBE_URL``, ``--api-key``/``$LRPROBE_API_KEY``). Exit codes: see
:mod:`lrprobe.cli.remote`."""

from __future__ import annotations

import csv
import io
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lrprobe.cli import options as opt
from lrprobe.cli.errors import fail
from lrprobe.cli.remote import (
    ApiKey,
    Format,
    FormatOption,
    Url,
    connect,
    echo_json,
    jobs_table,
    print_job,
    print_table,
)
from lrprobe.cli.render import print_recommendation

if TYPE_CHECKING:
    from lrprobe.client import Job

jobs_app = typer.Typer(help="Probe jobs on the lrprobe service.", no_args_is_help=True)

JobId = Annotated[str, typer.Argument(help="The job id (from `lrprobe jobs ls`).")]
Timeout = Annotated[
    float | None, typer.Option(help="Give up waiting after this many seconds (exit 4).")
]


def submit_command(
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="builtin://NAME, file://, https://, s3://, gs://, upload://ID, or a local file "
            "(uploaded first).",
        ),
    ],
    model: Annotated[
        Path | None, typer.Option("--model", help="Checkpoint file or HF folder to upload first.")
    ] = None,
    model_id: Annotated[
        str | None, typer.Option("--model-id", help="An uploaded model (`lrprobe models upload`).")
    ] = None,
    arch: opt.Arch = None,
    arch_config: opt.ArchConfig = None,
    loss: opt.Loss = "cross_entropy",
    optimizer: opt.Optimizer = "sgd",
    momentum: opt.Momentum = 0.9,
    weight_decay: opt.WeightDecay = 0.0,
    partition: opt.Partition = "layer",
    max_groups: opt.MaxGroups = None,
    batches: opt.Batches = 40,
    batch_size: opt.BatchSize = 128,
    heldout_batches: opt.HeldoutBatches = 4,
    block_size: opt.BlockSize = None,
    seed: opt.Seed = 0,
    device: opt.Device = "auto",
    micro_batch: opt.MicroBatch = None,
    calibration_steps: opt.CalibrationSteps = 40,
    label: Annotated[str | None, typer.Option(help="A name for the job.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result and print it.")] = False,
    timeout: Timeout = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="With --wait: also write the recommendation as JSON here."),
    ] = None,
    output: FormatOption = Format.table,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Submit a probe to the service (flags as `lrprobe probe`); prints the job, or with --wait
    the per-layer learning rates."""
    if (model is None) == (model_id is None):
        fail("pass either --model PATH (uploaded first) or --model-id ID", code="usage")
    try:
        config = opt.json_arg(arch_config)
        rules = opt.partition_arg(partition)
    except (ValueError, OSError) as exc:
        fail(str(exc), code="invalid_argument")
    with connect(url, api_key) as lrp:
        if model is not None:
            model_id = lrp.upload_model(model, arch=arch, arch_config=config).id
        data_ref: str | Path = data
        if "://" not in data:
            data_ref = Path(data).expanduser()
        job = lrp.submit(
            model=model_id or "", data=data_ref, loss=loss,  # type: ignore[arg-type]
            optimizer={
                "name": optimizer,
                "weight_decay": weight_decay,
                # the other optimizers keep their own default (RMSprop's momentum is 0)
                **({"momentum": momentum} if optimizer == "momentum" else {}),
            },
            partition={"rule": rules, "max_groups": max_groups},
            budget={"batches": batches, "batch_size": batch_size,
                    "heldout_batches": heldout_batches, "calibration_steps": calibration_steps,
                    "micro_batch": micro_batch},
            seed=seed, block_size=block_size, device=device,  # type: ignore[arg-type]
            label=label,
        )  # fmt: skip
        if not wait:
            _show(job, output)
            return
        _finish(job, timeout, output, json_out)


@jobs_app.command("ls")
def list_command(
    status: Annotated[
        str | None,
        typer.Option(
            help="Only jobs in this status (queued, running, succeeded, failed, cancelled)."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many (newest first).")] = 50,
    output: FormatOption = Format.table,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """List your jobs, newest first."""
    from itertools import islice

    with connect(url, api_key) as lrp:
        jobs = list(islice(lrp.list_jobs(status, page_size=min(limit, 200)), limit))  # type: ignore[arg-type]
    if output is Format.json:
        echo_json([j.data for j in jobs])
    else:
        print_table(jobs_table(jobs))


@jobs_app.command("show")
def show_command(
    job_id: JobId, output: FormatOption = Format.table, url: Url = None, api_key: ApiKey = None
) -> None:
    """One job's state; with its learning rates once it succeeded."""
    with connect(url, api_key) as lrp:
        job = lrp.get_job(job_id)
        rec = job.recommendation() if job.status == "succeeded" else None
    if output is Format.json:
        echo_json({"job": job.data.model_dump(mode="json"),
                   "recommendation": rec.to_dict() if rec else None})  # fmt: skip
        return
    print_job(job.data)
    if rec is not None:
        print_recommendation(rec)


@jobs_app.command("wait")
def wait_command(
    job_id: JobId,
    timeout: Timeout = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the recommendation as JSON here.")
    ] = None,
    output: FormatOption = Format.table,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Wait for a job (progress on stderr) and print its learning rates; exit 1 if it failed."""
    with connect(url, api_key) as lrp:
        _finish(lrp.get_job(job_id), timeout, output, json_out)


@jobs_app.command("cancel")
def cancel_command(
    job_id: JobId, output: FormatOption = Format.table, url: Url = None, api_key: ApiKey = None
) -> None:
    """Cancel a queued job, or ask a running one to stop at its next batch."""
    with connect(url, api_key) as lrp:
        job = lrp.cancel(job_id)
    if output is Format.json:
        echo_json(job.data)
    elif job.status == "cancelled":
        typer.echo(f"cancelled {job.id}")
    else:
        typer.echo(f"cancel requested for {job.id} ({job.status}; it stops at its next batch)")


class ExportFormat(StrEnum):
    json = "json"
    csv = "csv"
    table = "table"


@jobs_app.command("export")
def export_command(
    job_id: JobId,
    output_path: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
    output: Annotated[
        ExportFormat, typer.Option("--format", help="json (all diagnostics), csv or table.")
    ] = ExportFormat.json,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Export a succeeded job's recommendation (JSON as the API returns it, or CSV per group)."""
    with connect(url, api_key) as lrp:
        rec = lrp.get_job(job_id).recommendation()
    if output is ExportFormat.json:
        text = rec.to_json(indent=2) + "\n"
    elif output is ExportFormat.csv:
        text = _csv(rec.groups)
    else:
        text = rec.table() + "\n"
    if output_path is None:
        typer.echo(text, nl=False)
    else:
        output_path.write_text(text)
        typer.echo(f"wrote {output_path}", err=True)


def _csv(groups: Any) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["group", "params", "lr", "lr_low", "lr_high", "eta", "flags"])
    for g in groups:
        writer.writerow([g.name, g.numel, g.lr, g.interval[0], g.interval[1], g.eta,
                         " ".join(g.flags)])  # fmt: skip
    return buffer.getvalue()


def _show(job: Job, output: Format) -> None:
    if output is Format.json:
        echo_json(job.data)
    else:
        typer.echo(f"submitted {job.id} ({job.status}); follow it with: lrprobe jobs wait {job.id}")


def _finish(job: Job, timeout: float | None, output: Format, json_out: Path | None) -> None:
    job.wait(timeout=timeout, progress=sys.stderr.isatty())
    rec = job.recommendation()  # JobFailed (exit 1) for a failed or cancelled job
    if json_out is not None:
        json_out.write_text(rec.to_json(indent=2))
    if output is Format.json:
        echo_json({"job": job.data.model_dump(mode="json"), "recommendation": rec.to_dict()})
    else:
        print_recommendation(rec)
        if json_out is not None:
            typer.echo(f"full result written to {json_out}")
