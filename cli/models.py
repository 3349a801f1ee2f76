"""``lrprobe models upload|show`` and ``lrprobe datasets upload``: artifacts on the service."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lrprobe.cli.errors import fail
from lrprobe.cli.remote import ApiKey, Format, FormatOption, Url, connect, echo_json

if TYPE_CHECKING:
    from lrprobe.client.schemas import DatasetOut, ModelOut

models_app = typer.Typer(help="Checkpoints on the lrprobe service.", no_args_is_help=True)
datasets_app = typer.Typer(help="Datasets on the lrprobe service.", no_args_is_help=True)


@models_app.command("upload")
def upload_model_command(
    path: Annotated[Path, typer.Argument(help="Checkpoint file or Hugging Face model folder.")],
    arch: Annotated[str | None, typer.Option(help="Built-in architecture (mlp, cnn, …).")] = None,
    arch_config: Annotated[
        str | None, typer.Option(help="Architecture config as JSON, or @file.json.")
    ] = None,
    output: FormatOption = Format.table,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Upload a checkpoint; prints its id for `lrprobe submit --model-id`."""
    from lrprobe.cli.options import json_arg

    try:
        config = json_arg(arch_config)
    except (ValueError, OSError) as exc:
        fail(str(exc), code="invalid_argument")
    with connect(url, api_key) as lrp:
        model = lrp.upload_model(path, arch=arch, arch_config=config)
    _print_model(model, output)


@models_app.command("show")
def show_model_command(
    model_id: Annotated[str, typer.Argument(help="The model id.")],
    output: FormatOption = Format.table,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """One uploaded model."""
    with connect(url, api_key) as lrp:
        model = lrp.get_model(model_id)
    _print_model(model, output)


@datasets_app.command("upload")
def upload_dataset_command(
    path: Annotated[Path, typer.Argument(help=".npz, .pt, .csv, .parquet, .npy or .bin file.")],
    output: FormatOption = Format.table,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Upload a dataset; prints the upload://ID to pass as `lrprobe submit --data`."""
    with connect(url, api_key) as lrp:
        dataset = lrp.upload_dataset(path)
    _print_dataset(dataset, output)


def _print_model(model: ModelOut, output: Format) -> None:
    if output is Format.json:
        echo_json(model)
        return
    arch = f"{model.arch} " if model.arch else ""
    typer.echo(
        f"{model.id}  {model.format}  {arch}{model.num_params:,} parameters  {model.filename}"
    )


def _print_dataset(dataset: DatasetOut, output: Format) -> None:
    if output is Format.json:
        echo_json(dataset)
    else:
        typer.echo(f"{dataset.uri}  {dataset.format}  {dataset.size_bytes:,} bytes  "
                   f"{dataset.filename}")  # fmt: skip
