"""What a user takes away from a job page: the recommendation as CSV, and a Python snippet that
builds ``torch.optim`` parameter groups from it by parameter name."""

from __future__ import annotations

import csv
import io
import json
import math

from lrprobe.client.schemas import JobOut, Recommendation

CSV_COLUMNS = (
    "group", "lr", "lr_low", "lr_high", "eta", "eta_low", "eta_high", "eta_median", "eta_iqr",
    "negative_fraction", "numel", "flags", "param_names",
)  # fmt: skip

_OPTIMIZERS = {
    "sgd": "torch.optim.SGD", "momentum": "torch.optim.SGD", "adam": "torch.optim.Adam",
    "adamw": "torch.optim.AdamW", "rmsprop": "torch.optim.RMSprop",
    "adagrad": "torch.optim.Adagrad", "nadam": "torch.optim.NAdam", "radam": "torch.optim.RAdam",
    "lion": "lion_pytorch.Lion",
}  # fmt: skip


def _num(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else repr(float(value))


def recommendation_csv(recommendation: Recommendation) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for g in recommendation.groups:
        writer.writerow(
            [
                g.name, _num(g.lr), _num(g.lr_interval[0]), _num(g.lr_interval[1]), _num(g.eta),
                _num(g.eta_interval[0]), _num(g.eta_interval[1]), _num(g.spread.median),
                _num(g.spread.iqr), _num(g.spread.negative_fraction), g.numel,
                ";".join(g.flags), ";".join(g.param_names),
            ]
        )  # fmt: skip
    return out.getvalue()


def _lr_literal(value: float) -> str:
    return f"{value:.4g}"


def _optimizer_kwargs(job: JobOut) -> list[str]:
    spec = job.spec.optimizer
    if spec.name == "momentum":
        kwargs = [f"momentum={spec.momentum}"]
        if spec.dampening:
            kwargs.append(f"dampening={spec.dampening}")
        if spec.nesterov:
            kwargs.append("nesterov=True")
    elif spec.name in ("adam", "adamw", "nadam", "radam"):
        kwargs = [f"betas=({spec.betas[0]}, {spec.betas[1]})", f"eps={spec.eps:g}"]
    elif spec.name == "lion":
        kwargs = [f"betas=({spec.betas[0]}, {spec.betas[1]})"]
    elif spec.name == "rmsprop":
        kwargs = [f"eps={spec.eps:g}"] + ([f"momentum={spec.momentum}"] if spec.momentum else [])
    elif spec.name == "adagrad":
        kwargs = [f"eps={spec.eps:g}"]
    else:
        kwargs = []
    if spec.weight_decay:
        kwargs.append(f"weight_decay={spec.weight_decay:g}")
    # The optimizer's other keyword arguments (amsgrad, centered, alpha, …), as probed.
    kwargs += [f"{key}={value!r}" for key, value in sorted(spec.options.items())]
    return kwargs


def torch_snippet(job: JobOut, recommendation: Recommendation) -> str:
    """Copy-ready code: a {group: (lr, parameter names)} table and the optimizer built from it.
    Groups without a usable rate keep the single-group rate (the optimizer's default)."""
    default = recommendation.single_group_lr
    lines = [
        "import torch",
        "",
        f"# lrprobe job {job.id}: per-group learning rates for {job.spec.optimizer.name}",
        "LEARNING_RATES = {",
    ]
    skipped = []
    for g in recommendation.groups:
        if g.lr is None or not math.isfinite(g.lr) or g.lr <= 0:
            skipped.append(g.name)
            continue
        note = f"  # flagged: {', '.join(g.flags)}" if g.flags else ""
        lines.append(
            f"    {json.dumps(g.name)}: ({_lr_literal(g.lr)}, {json.dumps(g.param_names)}),{note}"
        )
    lines.append("}")
    if skipped:
        lines.append(f"# no rate for {', '.join(skipped)}: they keep the default lr below")
    lines += [
        "",
        "params = dict(model.named_parameters())",
        "grouped = {name for _, names in LEARNING_RATES.values() for name in names}",
        "param_groups = [",
        '    {"params": [params[n] for n in names], "lr": lr}',
        "    for lr, names in LEARNING_RATES.values()",
        "]",
        "rest = [p for n, p in params.items() if n not in grouped]",
        "if rest:",
        '    param_groups.append({"params": rest})',
    ]
    cls = _OPTIMIZERS[job.spec.optimizer.name]
    default_lr = _lr_literal(default) if default and default > 0 else "1e-3"
    kwargs = ", ".join([f"lr={default_lr}", *_optimizer_kwargs(job)])
    lines.append(f"optimizer = {cls}(param_groups, {kwargs})")
    # The quality benchmark's one measured alternative to constant rates (README: Use it in
    # training): rarer late collapses, slower training.
    lines += [
        "",
        "# Constant rates train fastest. Where a late collapse would cost more than speed",
        "# (see the job's notes), make them the peak of a warm-up + cosine schedule",
        "# (pip install lrprobe):",
        f"# {SCHEDULE_LINE}",
    ]
    return "\n".join(lines) + "\n"


# Commented out in the snippet; the tests run it uncommented.
SCHEDULE_LINE = "scheduler = lrprobe.warmup_cosine(optimizer, steps)  # .step() after each step"
