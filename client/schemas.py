"""THE wire contract of lrprobe's HTTP API (v1): request and response models shared by the
service, the worker (which parses ``jobs.spec`` with :class:`JobCreate`) and the SDK.

Pydantic v2 only: no torch, no FastAPI, no SQLAlchemy. Field names here are the JSON names.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
    model_validator,
)

from lrprobe.client.error_catalogue import CATALOGUE

PROBLEM_CODES: tuple[str, ...] = tuple(c for c, e in CATALOGUE.items() if e.status is not None)
"""Stable ``code`` values of :class:`Problem` (the service's error responses); the SDK maps
each to an exception class by its family."""

JOB_ERROR_CODES: tuple[str, ...] = tuple(c for c, e in CATALOGUE.items() if e.job)
"""Stable ``JobOut.error.code`` values of a failed job (the SDK raises them as ``JobFailed``)."""

CLIENT_ERROR_CODES: tuple[str, ...] = tuple(
    c for c, e in CATALOGUE.items() if e.status is None and not e.job
)
"""Codes the SDK and the CLI raise themselves, never sent by the service (plus ``http_<status>``
for an error response without a problem body, such as a proxy's error page)."""

ERROR_CODES: tuple[str, ...] = tuple(CATALOGUE)
"""Every stable error code lrprobe sends or raises: the keys of
:data:`lrprobe.client.error_catalogue.CATALOGUE`, which holds each one's family, status, title
and advice."""

JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]
LossName = Literal["cross_entropy", "mse", "bce", "lm_cross_entropy"]
OptimizerName = Literal[
    "sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad", "nadam", "radam", "lion"
]
OPTIMIZER_OPTIONS: dict[str, tuple[str, ...]] = {
    "adam": ("amsgrad",),
    "adamw": ("amsgrad",),
    "rmsprop": ("alpha", "centered"),
    "adagrad": ("lr_decay", "initial_accumulator_value"),
    "nadam": ("momentum_decay", "decoupled_weight_decay"),
    "radam": ("decoupled_weight_decay",),
}
"""The keyword arguments of each optimizer that ``options`` may set (as in ``torch.optim``)."""
_BOOL_OPTIONS = frozenset({"amsgrad", "centered", "decoupled_weight_decay"})
PartitionRuleName = Literal["layer", "block", "kind", "tensor", "single"]
DeviceName = Literal["auto", "cpu", "cuda"]

# Requests: unknown fields are refused, and so are infinities and NaN (JSON has none, and the
# service stores specs as standard JSON). Numbers and booleans are strict (StrictInt,
# StrictBool, StrictFloat): "admin": "yes" or "batches": true is an error, never a coercion.
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL bytes")
    return value


def _printable_name(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain NUL bytes or other control characters")
    return value


NoNulStr = Annotated[str, AfterValidator(_no_nul)]
Name = Annotated[str, AfterValidator(_printable_name)]


class _Out(BaseModel):
    """Responses: unknown fields from a newer server are kept, not rejected."""

    model_config = ConfigDict(extra="ignore")


# --- job spec --------------------------------------------------------------------------------


OptionValue = StrictBool | StrictFloat
_Betas = tuple[StrictFloat, StrictFloat]


def _check_betas(value: _Betas | None) -> _Betas | None:
    if value is not None and not all(0.0 <= b < 1.0 for b in value):
        raise ValueError("both betas must lie in [0, 1), e.g. [0.9, 0.999]")
    return value


class OptimizerGroup(BaseModel):
    """Parameters whose hyperparameters differ from the optimizer's, as in a ``torch.optim``
    parameter group (e.g. no weight decay for biases and norms). Unset fields keep the
    optimizer's values."""

    model_config = _STRICT

    params: list[Annotated[str, Field(min_length=1, max_length=500)]] = Field(
        min_length=1, max_length=100_000, description="Parameter names (named_parameters())."
    )
    momentum: StrictFloat | None = Field(None, ge=0.0, lt=1.0)
    dampening: StrictFloat | None = Field(None, ge=0.0, lt=1.0)
    nesterov: StrictBool | None = None
    betas: _Betas | None = None
    eps: StrictFloat | None = Field(None, gt=0.0)
    weight_decay: StrictFloat | None = Field(None, ge=0.0)
    options: dict[str, OptionValue] = Field(default_factory=dict)

    _betas_in_range = field_validator("betas")(_check_betas)


class OptimizerSpec(BaseModel):
    """The optimizer the user will train with; hyperparameters follow ``torch.optim``.
    A bare name (``"adam"``) means that optimizer with these defaults (each optimizer's own:
    momentum 0.9 for 'momentum' and 0 for the others, betas (0.9, 0.99) for lion, eps 1e-10
    for adagrad)."""

    model_config = _STRICT

    name: OptimizerName = Field(
        description="sgd, momentum (SGD with momentum), adam, adamw, rmsprop, adagrad, nadam, "
        "radam or lion (lion-pytorch's Lion)."
    )
    momentum: StrictFloat = Field(
        0.9,
        ge=0.0,
        lt=1.0,
        description="Momentum β in [0, 1), read by 'momentum' (default 0.9) and 'rmsprop' "
        "(default 0); plain 'sgd' and the others have none.",
    )
    dampening: StrictFloat = Field(0.0, ge=0.0, lt=1.0, description="SGD dampening, in [0, 1).")
    nesterov: StrictBool = Field(False, description="Nesterov momentum (needs dampening 0).")
    betas: _Betas = Field((0.9, 0.999), description="Adam betas, each in [0, 1).")
    eps: StrictFloat = Field(1e-8, gt=0.0, description="Adam epsilon, > 0.")
    weight_decay: StrictFloat = Field(0.0, ge=0.0, description="Weight decay, ≥ 0.")
    options: dict[str, OptionValue] = Field(
        default_factory=dict,
        description="Other keyword arguments of the optimizer: amsgrad (adam, adamw); alpha, "
        "centered (rmsprop); lr_decay, initial_accumulator_value (adagrad); momentum_decay, "
        "decoupled_weight_decay (nadam); decoupled_weight_decay (radam).",
    )
    param_groups: list[OptimizerGroup] = Field(
        default_factory=list,
        max_length=64,
        description="Parameter groups whose hyperparameters differ (at most 64).",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    _betas_in_range = field_validator("betas")(_check_betas)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> OptimizerSpec:
        if self.nesterov and (self.name != "momentum" or self.dampening != 0.0):
            raise ValueError(
                "nesterov needs the 'momentum' optimizer with dampening 0 (as in torch.optim.SGD)"
            )
        return self

    @model_validator(mode="after")
    def _own_defaults_and_options(self) -> OptimizerSpec:
        given = self.model_fields_set
        # Only 'momentum' reads the 0.9 default; a job echoes 0 for the others (rmsprop's own
        # default; plain sgd and the Adam family have no momentum buffer).
        if self.name != "momentum" and "momentum" not in given:
            self.momentum = 0.0
        if self.name == "lion" and "betas" not in given:
            self.betas = (0.9, 0.99)
        if self.name == "adagrad" and "eps" not in given:
            self.eps = 1e-10
        allowed = OPTIMIZER_OPTIONS.get(self.name, ())
        seen: set[str] = set()
        for options in [self.options, *(g.options for g in self.param_groups)]:
            unknown = sorted(set(options) - set(allowed))
            if unknown:
                raise ValueError(
                    f"{self.name} takes no option {', '.join(unknown)}; its options are "
                    f"{', '.join(allowed) or 'none'}"
                )
            for key, value in options.items():
                if (key in _BOOL_OPTIONS) != isinstance(value, bool):
                    kind = "true or false" if key in _BOOL_OPTIONS else "a number"
                    raise ValueError(f"option {key} must be {kind}, not {value!r}")
        for group in self.param_groups:
            twice = seen.intersection(group.params)
            if twice:
                raise ValueError(f"parameters {sorted(twice)[:5]} are in two parameter groups")
            seen.update(group.params)
        return self


MAX_PARTITION_RULES = 64
MAX_REGEX_LENGTH = 256


class PartitionSpec(BaseModel):
    """How parameters are grouped, one learning rate per group. A bare rule string (``"layer"``)
    means that rule; ``{"rule": {"^encoder\\\\.": "encoder"}}`` groups by regular expressions
    (parameters matching none go to a group named ``rest``)."""

    model_config = _STRICT

    rule: PartitionRuleName | dict[NoNulStr, Name] = Field(
        "layer",
        description="layer (one group per module owning parameters), block (one per repeated "
        "block, such as a transformer layer), kind (attention, mlp, norm per block; embeddings "
        "together), tensor, single, or a mapping {regex: group_name}.",
    )
    max_groups: StrictInt | None = Field(
        None,
        ge=1,
        le=10_000,
        description="Merge groups beyond this count (None: automatic, at most 16 groups, "
        "coarsened along the model's structure first).",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_rule(cls, value: Any) -> Any:
        return {"rule": value} if isinstance(value, str) else value

    @field_validator("rule")
    @classmethod
    def _regexes_compile(cls, value: str | dict[str, str]) -> str | dict[str, str]:
        if isinstance(value, dict):
            if not value:
                raise ValueError("a regex partition needs at least one {regex: group_name} rule")
            # Bounds on what is compiled; a pattern that backtracks for ever is stopped by the
            # worker's time limit (the probe runs in a process it kills).
            if len(value) > MAX_PARTITION_RULES:
                raise ValueError(f"a regex partition has at most {MAX_PARTITION_RULES} rules")
            for pattern, name in value.items():
                if len(pattern) > MAX_REGEX_LENGTH:
                    raise ValueError(
                        f"each partition regex is at most {MAX_REGEX_LENGTH} characters"
                    )
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(
                        f"{pattern!r} is not a valid regular expression: {exc}"
                    ) from None
                if not name or len(name) > 200:
                    raise ValueError(f"the group name for {pattern!r} must be 1-200 characters")
        return value


class BudgetSpec(BaseModel):
    """What the probe may spend."""

    model_config = _STRICT

    batches: StrictInt = Field(
        40,
        ge=1,
        le=256,
        description="The probe's budget (1-256): grouped-Newton trajectory steps of the default "
        "method (40 was benchmarked; fewer is faster and rougher).",
    )
    batch_size: StrictInt = Field(128, ge=1, le=8192, description="Examples per batch (1-8192).")
    heldout_batches: StrictInt = Field(4, ge=1, le=64, description="Held-out batches (1-64).")
    calibration_steps: StrictInt = Field(
        40,
        ge=1,
        le=256,
        description="The length of each λ₁ calibration run in steps (1-256; 40 was "
        "benchmarked; with the 'momentum' optimizer each run is twice as long). The trajectory "
        "method runs three candidates (a fourth when the largest wins steeply).",
    )
    micro_batch: StrictInt | None = Field(
        None,
        ge=1,
        le=8192,
        description="Examples per pass (1-8192): passes run on micro-batches and accumulate, "
        "exactly for a mean loss; default: the whole batch. A pass that runs out of memory is "
        "retried at half the size.",
    )
    time_limit_s: StrictFloat | None = Field(
        None,
        ge=10.0,
        le=86_400.0,
        description="Wall-clock cap of the probe in seconds (10-86400); default: the server's.",
    )


class JobCreate(BaseModel):
    """A probe request: which model, which data, and how the user will train."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=())

    model_id: Name = Field(min_length=1, max_length=64, description="An uploaded model's id.")
    data: NoNulStr = Field(
        min_length=1,
        max_length=4096,
        description="Data reference: builtin://NAME, file:///PATH (under a data root), "
        "https://HOST/PATH, s3://BUCKET/KEY, gs://BUCKET/KEY or upload://DATASET_ID.",
        examples=["builtin://digits"],
    )
    loss: LossName = Field(description="cross_entropy, mse, bce or lm_cross_entropy.")
    optimizer: OptimizerSpec = Field(
        default_factory=lambda: OptimizerSpec(name="sgd"),
        description="The optimizer the user trains with (or its bare name).",
    )
    partition: PartitionSpec = Field(
        default_factory=PartitionSpec, description="Grouping of parameters (or a bare rule)."
    )
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    block_size: StrictInt | None = Field(
        None, ge=1, le=1_000_000, description="Context length for token-stream data."
    )
    seed: StrictInt = Field(0, ge=0, le=2**63 - 1)
    device: DeviceName = "auto"
    label: Name | None = Field(None, max_length=200, description="A free-form name for the job.")
    run: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]*$",
        description="The training run this job belongs to (letters, digits and ._:@/+-): the "
        "re-probes of one run share it, and the dashboard plots their rates over the steps.",
    )
    run_step: StrictInt | None = Field(
        None, ge=0, le=10**12, description="The training step whose weights this job probes."
    )


# --- resources -------------------------------------------------------------------------------


class ModelOut(_Out):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    id: str
    sha256: str
    filename: str
    size_bytes: int
    format: str = Field(description="safetensors, torch_state_dict, hf or pt2.")
    arch: str | None = None
    arch_config: dict[str, Any] = Field(default_factory=dict)
    num_params: int = 0
    groups: dict[str, Any] = Field(
        default_factory=dict,
        description="Provisional per-layer grouping read from the file's tensor names "
        "(group → tensor names); the probe's partition is authoritative.",
    )
    created_at: datetime


class DatasetOut(_Out):
    id: str
    sha256: str
    filename: str
    size_bytes: int
    format: str = Field(description="npz, pt, csv, parquet, npy or bin.")
    created_at: datetime
    uri: str = Field(description="The data reference to use in a job: upload://ID.")


class JobProgress(_Out):
    done: int = 0
    total: int = 0
    phase: str | None = None


class JobError(_Out):
    code: str
    detail: str | None = None


class JobOut(_Out):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    id: str
    status: JobStatusName
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: JobProgress = Field(default_factory=JobProgress)
    attempts: int = 0
    cancel_requested: bool = False
    spec: JobCreate
    error: JobError | None = None
    model_id: str
    label: str | None = None
    run: str | None = None
    run_step: int | None = None


class JobPage(_Out):
    items: list[JobOut]
    next_cursor: str | None = Field(
        None, description="Pass as ?cursor= for the next page; null on the last page."
    )


class JobEvent(_Out):
    id: int
    job_id: str
    at: datetime
    kind: str = Field(description="status or progress.")
    data: dict[str, Any] = Field(default_factory=dict)


class JobEventList(_Out):
    """The polling fallback of the event stream: events after ``?after=``."""

    items: list[JobEvent]
    status: JobStatusName
    final: bool = Field(description="True when the job is final and no further events come.")


# --- recommendation (mirror of lrprobe.worker.newton.ProbeResult.to_dict()) -----------------


class Spread(BaseModel):
    model_config = ConfigDict(extra="allow")

    median: float | None = None
    iqr: float | None = None
    negative_fraction: float | None = None


class GroupRecommendation(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    param_names: list[str]
    numel: int
    lr: float | None
    lr_interval: tuple[float | None, float | None]
    eta: float | None
    eta_interval: tuple[float | None, float | None]
    eta_newton: float | None = None
    eta_diagonal: float | None = None
    g: float | None = None
    g_snr: float | None = None
    h: float | None = None
    curvature: float | None = None
    d3: float | None = None
    spread: Spread
    flags: list[str] = Field(default_factory=list)


class ScaleCheck(BaseModel):
    model_config = ConfigDict(extra="allow")

    scale: float
    predicted: float | None
    realised: float | None
    ratio: float | None = None


class Cost(BaseModel):
    model_config = ConfigDict(extra="allow")

    batches: int
    passes: dict[str, int] = Field(default_factory=dict)
    seconds: float
    fb_seconds: float | None = None
    fb_equivalents: float | None = None
    device: str


class Recommendation(BaseModel):
    """What a succeeded job produced; non-finite numbers are ``null``. New diagnostics of later
    method versions pass through (``extra="allow"``)."""

    model_config = ConfigDict(extra="allow")

    method_version: str
    optimizer: dict[str, Any]
    direction: str
    lr_factor: float | None
    scale: float | None
    groups: list[GroupRecommendation]
    single_group_lr: float | None
    single_group_eta: float | None
    single_group_interval: tuple[float | None, float | None]
    status: str
    lam_int: float | None = None
    loss: float | None = None
    hessian_eigenvalues: list[float | None] = Field(default_factory=list)
    coupling: list[list[float | None]] = Field(default_factory=list)
    predicted_decrease: dict[str, float | None] = Field(default_factory=dict)
    scale_checks: list[ScaleCheck] = Field(
        default_factory=list,
        description="method 'fixed': predicted and realised held-out loss change per step scale; "
        "method 'trajectory': calibration runs, whose 'realised' is the training-loss change of "
        "a short run at each candidate scale ('predicted' is null).",
    )
    cost: Cost
    notes: list[str] = Field(default_factory=list)
    method: str = Field(
        "fixed", description="How the rates were found: 'trajectory' (the default) or 'fixed'."
    )
    trajectory_losses: list[float | None] = Field(
        default_factory=list,
        description="The training loss at each step of the probe's trajectory (method "
        "'trajectory'; empty for 'fixed').",
    )

    @property
    def lrs(self) -> dict[str, float | None]:
        """Recommended learning rate per group name."""
        return {g.name: g.lr for g in self.groups}


# --- API keys --------------------------------------------------------------------------------


class ApiKeyCreate(BaseModel):
    model_config = _STRICT

    name: Name = Field(min_length=1, max_length=200, description="Who or what uses the key.")
    admin: StrictBool = Field(False, description="Admin keys manage keys.")


class ApiKeyOut(_Out):
    id: str
    name: str
    prefix: str = Field(description="The secret's first characters, to tell keys apart.")
    admin: bool
    created_at: datetime
    revoked_at: datetime | None = None


class ApiKeyCreated(ApiKeyOut):
    secret: str = Field(description="The key itself; shown once, stored only as a hash.")


# --- errors and health -----------------------------------------------------------------------


class FieldError(_Out):
    loc: list[str | int]
    msg: str
    type: str


class Problem(_Out):
    """RFC 9457 problem details, with a stable ``code`` (see :data:`ERROR_CODES`)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    code: str
    errors: list[FieldError] = Field(default_factory=list)


class Health(_Out):
    status: Literal["ok"] = "ok"
    version: str


class Ready(_Out):
    status: Literal["ready", "not_ready"]
    checks: Annotated[
        dict[str, bool], Field(description="database, schema (at the latest migration), broker.")
    ]
    detail: dict[str, str] = Field(default_factory=dict)
