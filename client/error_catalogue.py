"""THE error catalogue: every stable code lrprobe sends or raises, with its family, the HTTP
status of its problem response, a title and one sentence of advice.

Everything else derives from it: the SDK's exception classes (by family), the service's
problem responses (status, title, and the detail when a raise gives none), the dashboard's
advice for a failed job and the CLI's exit statuses (by family). ``tests/test_error_catalogue.py``
reads the source for codes missing here.

Part of the wire contract, so pydantic-free and torch-free: the service, the worker and the CLI
import it; it imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Family = Literal[
    "request",  # the request as sent: its syntax, media type, size or pace (400-422)
    "auth",  # no key, a wrong key, or a key without the rights (401, 403)
    "not_found",  # no such resource for this key (404), or an input a job names is gone
    "conflict",  # the resource's state does not allow the request (409)
    "rate_limit",  # too many requests (429)
    "checkpoint",  # a checkpoint refused, at upload or when the worker loads it
    "data",  # a data reference or dataset refused, at submission or when the worker reads it
    "probe",  # the probe could not run on this model and data (a failed job only)
    "server",  # the service or the worker failed; retrying later may help (5xx)
    "job",  # the SDK's own: a job that ended without a recommendation
    "connection",  # the SDK's own: the service could not be reached
    "wait",  # the SDK's own: a wait ran out before the job was final
    "usage",  # the CLI's own: a flag, argument, file or setting it cannot use
    "setup",  # the CLI's own: the local database, data folder, port or extras are not ready
]
"""What kind of failure a code is: the SDK raises one exception class per family of problem
codes, and the CLI picks its exit status by family."""

FAMILIES: tuple[Family, ...] = get_args(Family)


@dataclass(frozen=True)
class ErrorCode:
    """One stable code.

    ``status`` is the HTTP status of its problem response (``None``: the service never sends
    it as a problem); ``job`` says whether a failed job can carry it as ``JobOut.error.code``;
    a code with neither is raised by the SDK or the CLI themselves. ``advice`` is one sentence
    that says what to do; a raise usually gives a more precise ``detail``.
    """

    code: str
    family: Family
    title: str
    advice: str
    status: int | None = None
    job: bool = False


_CATALOGUE: tuple[ErrorCode, ...] = (
    # --- the request as sent ---------------------------------------------------------------------
    ErrorCode("bad_request", "request", "Bad request",
              "Send the request as the API reference at /docs describes.", status=400),
    ErrorCode("validation_error", "request", "Invalid request",
              "Fix the fields listed in errors and send the request again.", status=422),
    ErrorCode("invalid_cursor", "request", "Invalid cursor",
              "Pass back the next_cursor of the previous page unchanged, or leave it out.",
              status=422),
    ErrorCode("unsupported_media_type", "request", "Unsupported media type",
              "Send a JSON body with Content-Type: application/json (files go to POST "
              "/v1/models or /v1/datasets as multipart/form-data).", status=415),
    ErrorCode("request_too_large", "request", "Request too large",
              "Send a smaller body: files go to POST /v1/models or /v1/datasets.", status=413),
    ErrorCode("request_timeout", "request", "Request timeout",
              "Send the request body again in one go.", status=408),
    ErrorCode("method_not_allowed", "request", "Method not allowed",
              "Use one of the methods the API reference at /docs lists for this path.",
              status=405),
    # --- keys ------------------------------------------------------------------------------------
    ErrorCode("unauthorized", "auth", "Unauthorized",
              "Send Authorization: Bearer <api key> with a key that has not been revoked.",
              status=401),
    ErrorCode("admin_required", "auth", "Admin key required",
              "Use an admin key (lrprobe keys create NAME --admin) for this request.",
              status=403),
    ErrorCode("csrf_failed", "auth", "Form expired",
              "Reload the page and send the form again.", status=403),
    # --- resources -------------------------------------------------------------------------------
    ErrorCode("not_found", "not_found", "Not found",
              "Check the path against the API reference at /docs.", status=404),
    ErrorCode("model_not_found", "not_found", "Model not found",
              "Upload the checkpoint with POST /v1/models and use the id it returns.",
              status=404, job=True),
    ErrorCode("dataset_not_found", "not_found", "Dataset not found",
              "Upload the dataset with POST /v1/datasets and use the uri it returns.",
              status=404, job=True),
    ErrorCode("job_not_found", "not_found", "Job not found",
              "Check the job id; a key sees only its own jobs (GET /v1/jobs lists them).",
              status=404),
    ErrorCode("key_not_found", "not_found", "Key not found",
              "Check the key id (GET /v1/keys lists them).", status=404),
    ErrorCode("checkpoint_not_found", "not_found", "Checkpoint not found",
              "Check the checkpoint's path, or upload it again.", job=True),
    ErrorCode("data_not_found", "not_found", "Data not found",
              "Check the data reference: the file or object it names does not exist.", job=True),
    ErrorCode("conflict", "conflict", "Conflict",
              "Read the resource's current state and retry if the request still applies.",
              status=409),
    ErrorCode("idempotency_conflict", "conflict", "Idempotency key reused",
              "Use a new Idempotency-Key for a different request body.", status=409),
    ErrorCode("job_not_finished", "conflict", "Job not finished",
              "Wait until the job has succeeded (GET /v1/jobs/{id}/events follows it).",
              status=409),
    ErrorCode("job_finished", "conflict", "Job already finished",
              "Nothing to cancel: the job is already final.", status=409),
    ErrorCode("rate_limited", "rate_limit", "Too many requests",
              "Wait the Retry-After seconds, then send the request again.", status=429),
    ErrorCode("too_many_streams", "rate_limit", "Too many open event streams",
              "Close an event stream this key holds open, or poll the route without Accept: "
              "text/event-stream.",
              status=429),
    # --- the service or the worker failed --------------------------------------------------------
    ErrorCode("internal_error", "server", "Internal error",
              "Retry; if it happens again, report it with the time (it is in the log).",
              status=500, job=True),
    ErrorCode("service_unavailable", "server", "Service unavailable",
              "Retry after the Retry-After seconds; the operator can check GET /readyz.",
              status=503),
    ErrorCode("broker_unavailable", "server", "Job queue unavailable",
              "Retry in a minute; if it persists, ask the operator to check GET /readyz.",
              status=503),
    ErrorCode("artifact_missing", "server", "Stored file missing",
              "Upload the checkpoint or dataset again and submit a new job.", job=True),
    ErrorCode("artifact_corrupt", "server", "Stored file corrupt",
              "Upload the checkpoint or dataset again and submit a new job.", job=True),
    ErrorCode("device_unavailable", "server", "Device unavailable",
              "Ask for device auto or cpu, or ask the operator for a worker with that device.",
              job=True),
    ErrorCode("worker_lost", "server", "Worker lost",
              "The worker died repeatedly, usually from memory: try a smaller batch size.",
              job=True),
    ErrorCode("hf_unavailable", "server", "Transformers not installed",
              "Ask the operator to install lrprobe[hf] on the workers, or send a safetensors "
              "state dict with a built-in architecture.", job=True),
    ErrorCode("format_backend_unavailable", "server", "Format reader not installed",
              "Send the data as .npz or CSV, or ask the operator to install the reader the "
              "detail names.", job=True),
    ErrorCode("remote_backend_unavailable", "server", "Remote reader not installed",
              "Upload the data with POST /v1/datasets, or ask the operator to install the "
              "filesystem package the detail names.", job=True),
    # --- checkpoints -----------------------------------------------------------------------------
    ErrorCode("checkpoint_too_large", "checkpoint", "Checkpoint too large",
              "Send a smaller checkpoint, or ask the operator to raise "
              "LRPROBE_MAX_UPLOAD_BYTES.", status=413, job=True),
    ErrorCode("empty_upload", "checkpoint", "Empty upload",
              "Send the file itself: the upload had no content.", status=422),
    ErrorCode("unsupported_checkpoint", "checkpoint", "Unsupported checkpoint",
              "Send a safetensors state dict with an architecture name, a Hugging Face folder "
              "archive, or a state dict saved with torch.save(model.state_dict()).",
              status=415, job=True),
    ErrorCode("unsafe_archive", "checkpoint", "Unsafe archive",
              "Send an archive of plain files inside one folder, without links or absolute "
              "paths.", status=422, job=True),
    ErrorCode("pickle_refused", "checkpoint", "Pickle refused",
              "Save model.state_dict() with safetensors.torch.save_file and send that with "
              "the architecture name.", status=422, job=True),
    ErrorCode("torchscript_refused", "checkpoint", "TorchScript refused",
              "Send the model's state dict as safetensors with the architecture name instead "
              "of a TorchScript archive.", status=422, job=True),
    ErrorCode("pt2_disabled", "checkpoint", "Exported programs disabled",
              "Send a safetensors state dict, or ask the operator to set LRPROBE_ALLOW_PT2.",
              status=422, job=True),
    ErrorCode("pt2_refused", "checkpoint", "Exported program refused",
              "Export the model again without pickled members, or send a safetensors state "
              "dict.", job=True),
    ErrorCode("hf_invalid_model", "checkpoint", "Invalid Hugging Face model",
              "Send a folder saved with save_pretrained(safe_serialization=True): config.json "
              "with a model_type, and safetensors weights.", status=422, job=True),
    ErrorCode("hf_remote_code_refused", "checkpoint", "Remote code refused",
              "Send a model whose config needs no trust_remote_code, or its state dict with a "
              "built-in architecture.", status=422, job=True),
    ErrorCode("arch_not_applicable", "checkpoint", "Architecture not applicable",
              "Leave out arch and arch_config: this checkpoint format describes its own "
              "architecture.", status=422, job=True),
    ErrorCode("arch_required", "checkpoint", "Architecture required",
              "Name the architecture (arch) and its config for a state dict.", status=422,
              job=True),
    ErrorCode("invalid_arch_config", "checkpoint", "Invalid architecture config",
              "Fix arch_config as the detail says; the README lists each architecture's "
              "options.", status=422, job=True),
    ErrorCode("unknown_architecture", "checkpoint", "Unknown architecture",
              "Use one of the built-in architectures the detail lists.", job=True),
    ErrorCode("not_a_state_dict", "checkpoint", "Not a state dict",
              "Save model.state_dict(), a mapping of parameter names to tensors.", job=True),
    ErrorCode("no_parameters", "checkpoint", "No parameters",
              "Send a checkpoint whose model has trainable parameters.", job=True),
    ErrorCode("weights_mismatch", "checkpoint", "Weights do not fit",
              "Check arch and arch_config against the model that saved the checkpoint.",
              job=True),
    # --- data ------------------------------------------------------------------------------------
    ErrorCode("dataset_too_large", "data", "Dataset too large",
              "Send a smaller dataset, or ask the operator to raise LRPROBE_MAX_UPLOAD_BYTES.",
              status=413),
    ErrorCode("unsupported_data_format", "data", "Unsupported data format",
              "Send .npz or .pt tensors (x, y), Parquet or CSV, or a token stream (.npy or "
              ".bin of token ids).", status=415, job=True),
    ErrorCode("invalid_data_ref", "data", "Invalid data reference",
              "Use builtin://NAME, upload://ID, file://, s3://, gs:// or https://.",
              status=422, job=True),
    ErrorCode("unsupported_data_scheme", "data", "Unsupported data scheme",
              "Use builtin://, upload://, file://, s3://, gs:// or https://.", status=422,
              job=True),
    ErrorCode("data_ref_refused", "data", "Data reference refused",
              "Refer to a file under the configured data roots, or upload the data with "
              "POST /v1/datasets.", status=422, job=True),
    ErrorCode("host_not_allowed", "data", "Host not allowed",
              "Use a host on the operator's allow-list, or upload the data with POST "
              "/v1/datasets.", status=422, job=True),
    ErrorCode("address_not_allowed", "data", "Address not allowed",
              "Use a public host: references to private or local addresses are refused.",
              job=True),
    ErrorCode("unknown_builtin_dataset", "data", "Unknown built-in dataset",
              "Use one of the built-in datasets the detail lists.", status=422, job=True),
    ErrorCode("data_unreadable", "data", "Data unreadable",
              "Check that the file is complete and in the format its name says.", job=True),
    ErrorCode("data_too_large", "data", "Data too large",
              "Send a smaller dataset or a subset of it.", job=True),
    ErrorCode("invalid_data", "data", "Invalid data",
              "Fix the data as the detail says: features x and targets y of matching length.",
              job=True),
    ErrorCode("non_finite_data", "data", "Non-finite data",
              "Remove or impute the NaN and infinite values in the data.", job=True),
    ErrorCode("pickled_data_refused", "data", "Pickled data refused",
              "Save plain arrays (np.savez(path, x=features, y=targets)) without Python "
              "objects.", job=True),
    ErrorCode("remote_fetch_failed", "data", "Remote fetch failed",
              "Check that the remote object exists and is readable, or upload the data.",
              job=True),
    ErrorCode("block_size_required", "data", "Block size required",
              "Give the token stream's block size (budget.block_size).", job=True),
    ErrorCode("too_few_examples", "data", "Too few examples",
              "Use more data, fewer batches or a smaller batch size.", job=True),
    # --- the probe -------------------------------------------------------------------------------
    ErrorCode("invalid_spec", "probe", "Invalid stored job spec",
              "Submit the job again.", job=True),
    ErrorCode("invalid_probe_arguments", "probe", "Invalid probe arguments",
              "Change the probe's options as the detail says.", job=True),
    ErrorCode("invalid_batch_size", "probe", "Invalid batch size",
              "Use a batch size of at least 1 and at most the number of examples.", job=True),
    ErrorCode("invalid_holdout_fraction", "probe", "Invalid held-out fraction",
              "Use a held-out fraction between 0 and 1.", job=True),
    ErrorCode("unknown_loss", "probe", "Unknown loss",
              "Use cross_entropy, mse, bce or lm_cross_entropy.", job=True),
    ErrorCode("incompatible_loss", "probe", "Loss does not fit the data",
              "Pick the loss that matches the targets (class ids: cross_entropy; values: mse).",
              job=True),
    ErrorCode("incompatible_model_input", "probe", "Model input does not fit the data",
              "The model's input layer does not match the data's features: check the "
              "architecture config against the dataset.", job=True),
    ErrorCode("incompatible_model_output", "probe", "Model output does not fit the loss",
              "Check the model's output size against the number of classes or targets.",
              job=True),
    ErrorCode("time_limit_exceeded", "probe", "Time limit exceeded",
              "Give the probe fewer batches, a smaller batch size, or a larger time limit in "
              "the budget.", job=True),
    ErrorCode("out_of_memory", "probe", "Out of memory",
              "The probe ran out of memory; lower budget.batch_size or use a smaller model.",
              job=True),
    ErrorCode("non_finite_loss", "probe", "Non-finite loss",
              "The loss was NaN or infinite at the checkpoint: check the data scaling and the "
              "loss function.", job=True),
    ErrorCode("non_finite_summaries", "probe", "Non-finite derivatives",
              "Check the checkpoint for diverged weights and the data for extreme values.",
              job=True),
    ErrorCode("no_descent", "probe", "No descent direction",
              "The checkpoint is at a stationary point for this data: check the data, or probe "
              "a checkpoint before it converged.", job=True),
    # --- the SDK's own ---------------------------------------------------------------------------
    ErrorCode("failed", "job", "Job failed",
              "Read the job's error; submit it again once the cause is fixed."),
    ErrorCode("cancelled", "job", "Job cancelled",
              "Submit the job again if you still want its recommendation."),
    ErrorCode("connection_error", "connection", "Service unreachable",
              "Check LRPROBE_URL (or --url) and that the service is up."),
    ErrorCode("wait_timeout", "wait", "Wait timed out",
              "Wait again, or give a longer timeout: the job goes on."),
    # --- the CLI's own ---------------------------------------------------------------------------
    ErrorCode("usage", "usage", "Usage", "Run the command with --help to see its options."),
    ErrorCode("invalid_argument", "usage", "Invalid argument",
              "Fix the flag's value as the message says."),
    ErrorCode("file_not_found", "usage", "File not found",
              "Check the path: the file does not exist or cannot be read."),
    ErrorCode("invalid_settings", "usage", "Invalid setting",
              "Fix or unset the LRPROBE_ variable the message names."),
    ErrorCode("missing_extra", "setup", "Extra not installed",
              "Install the extra the message names with pip."),
    ErrorCode("database_not_initialized", "setup", "No database yet",
              "Start the service once with lrprobe serve, or run lrprobe migrate."),
    ErrorCode("database_unavailable", "setup", "Database unavailable",
              "Check LRPROBE_DATABASE_URL and that the database server is up."),
    ErrorCode("schema_not_at_head", "setup", "Database not migrated",
              "Run lrprobe migrate."),
    ErrorCode("data_dir_unusable", "setup", "Data folder unusable",
              "Set LRPROBE_DATA_DIR to a folder you can write."),
    ErrorCode("address_unavailable", "setup", "Address in use",
              "Stop what uses the port, or pass another --port."),
)  # fmt: skip

CATALOGUE: dict[str, ErrorCode] = {entry.code: entry for entry in _CATALOGUE}
"""Code → its entry; every stable code lrprobe sends or raises."""

assert len(CATALOGUE) == len(_CATALOGUE), "a code is listed twice"

STATUS_FAMILIES: dict[int, Family] = {
    401: "auth", 403: "auth", 404: "not_found", 409: "conflict", 429: "rate_limit",
}  # fmt: skip


def family_for_status(status: int) -> Family:
    """The family of an error response whose code is unknown (a newer server's, or a proxy's
    page without a problem body): by its HTTP status."""
    return STATUS_FAMILIES.get(status, "server" if status >= 500 else "request")


def entry(code: str) -> ErrorCode | None:
    """The catalogue's entry for ``code``; None for a code it does not know (``http_<status>``
    for an error response without a problem body, or a newer server's code)."""
    return CATALOGUE.get(code)


def problem_status(code: str) -> int:
    """The HTTP status the service sends ``code`` with; raises ``KeyError`` for a code that is
    never a problem response."""
    status = CATALOGUE[code].status
    if status is None:
        raise KeyError(f"{code!r} is not a problem code")
    return status


def advice(code: str) -> str | None:
    """The catalogue's sentence of advice for ``code``; None for an unknown code."""
    known = CATALOGUE.get(code)
    return known.advice if known else None
