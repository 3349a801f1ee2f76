"""A job's answer as the user applies it: typed groups, ``torch.optim`` parameter groups, a
table, a DataFrame, JSON. torch and pandas are imported only when asked for."""

from __future__ import annotations

import html
import importlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from lrprobe.client.schemas import Recommendation as RecommendationData
from lrprobe.rules.regroup import apply_rates, split_groups

Interval = tuple[float | None, float | None]


@dataclass(frozen=True)
class Group:
    """One parameter group's recommendation. ``lr`` is what to give the optimizer (None only if
    the probe could not produce a finite value); ``interval`` its 10–90 % bootstrap interval;
    ``flags`` say why it departs from the plain rule (``negative``, ``noisy``, ``low_snr``,
    ``unused``, ``fallback_global``)."""

    name: str
    param_names: tuple[str, ...]
    numel: int
    lr: float | None
    interval: Interval
    eta: float | None
    flags: tuple[str, ...]


class Recommendation:
    """Per-group learning rates of a succeeded job (``lrprobe.client.schemas.Recommendation`` on the
    wire, kept whole in :attr:`data`)."""

    def __init__(
        self, data: RecommendationData | Mapping[str, Any], *, job_id: str | None = None
    ) -> None:
        if not isinstance(data, RecommendationData):
            data = RecommendationData.model_validate(data)
        self.data = data
        self.job_id = job_id
        self.groups: tuple[Group, ...] = tuple(
            Group(
                name=g.name,
                param_names=tuple(g.param_names),
                numel=g.numel,
                lr=g.lr,
                interval=g.lr_interval,
                eta=g.eta,
                flags=tuple(g.flags),
            )
            for g in self.data.groups
        )

    # --- the numbers ---------------------------------------------------------------------

    @property
    def lrs(self) -> dict[str, float | None]:
        """Recommended learning rate per group name."""
        return {g.name: g.lr for g in self.groups}

    @property
    def single_group_lr(self) -> float | None:
        """The one learning rate the probe recommends if every parameter shares it."""
        return self.data.single_group_lr

    @property
    def single_group_interval(self) -> Interval:
        return self.data.single_group_interval

    @property
    def optimizer(self) -> dict[str, Any]:
        """The optimizer the learning rates are for (name and hyperparameters)."""
        return self.data.optimizer

    @property
    def method_version(self) -> str:
        return self.data.method_version

    @property
    def notes(self) -> list[str]:
        return self.data.notes

    # --- applying it ---------------------------------------------------------------------

    def param_groups(
        self,
        model: Any,
        base: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        default_lr: float | None = None,
    ) -> list[dict[str, Any]]:
        """``torch.optim`` parameter groups of ``model`` with the recommended learning rates,
        e.g. ``torch.optim.SGD(rec.param_groups(model))``.

        ``base``: the hyperparameters to keep, either one mapping for every parameter
        (``{"weight_decay": 0.01}``) or the parameter groups you would have built yourself (e.g.
        weight decay for weights, none for biases and norms); those are split by probe group and
        keep all their keys but ``lr``. Parameters are matched by name
        (``model.named_parameters()``). Raises ValueError naming the parameters if the model
        lacks probed ones or has trainable ones the probe did not cover (not the model that was
        probed). A group without a finite ``lr`` gets ``default_lr``, else the single-group
        learning rate.
        """
        params = self._check_model(model, "param_groups")
        if base is None or isinstance(base, Mapping):
            extra = dict(base or {})
            return [
                {
                    **extra,
                    "params": [params[n] for n in g.param_names],
                    "lr": self._lr(g, default_lr),
                    "name": g.name,
                }
                for g in self.groups
            ]
        groups, _, _ = split_groups(
            [{k: v for k, v in g.items() if k != "lr"} for g in base],
            _ids(model),
            self._rates(default_lr),
        )
        return groups

    def apply(
        self,
        optimizer: Any,
        model: Any,
        schedulers: Iterable[Any] = (),
        *,
        default_lr: float | None = None,
    ) -> Any:
        """Put the recommended rates into ``optimizer`` (already built over ``model``), in place.

        Each of its parameter groups is split by probe group and keeps every other
        hyperparameter (weight decay, betas, …). A schedule keeps running: a group's ``lr``
        becomes the recommended rate times the schedule's current multiplier (``lr`` over
        ``initial_lr``), and the per-group lists of ``schedulers`` (``base_lrs``, LambdaLR's
        ``lr_lambdas``, …) follow the split. Applying again only rescales. Returns ``optimizer``.
        """
        self._check_model(model, "apply")
        apply_rates(optimizer, _ids(model), self._rates(default_lr), schedulers)
        return optimizer

    def _rates(self, default_lr: float | None) -> dict[str, tuple[str, float]]:
        return {n: (g.name, self._lr(g, default_lr)) for g in self.groups for n in g.param_names}

    def _check_model(self, model: Any, what: str) -> dict[str, Any]:
        torch = _require("torch", f"Recommendation.{what} needs PyTorch: pip install torch")
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"{what} needs a torch.nn.Module, not {type(model).__name__}")
        params = dict(model.named_parameters())
        probed = [n for g in self.groups for n in g.param_names]
        missing = [n for n in probed if n not in params]
        covered = set(probed)
        extra = [n for n, p in params.items() if p.requires_grad and n not in covered]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"the model has no parameters named {_names(missing)}")
            if extra:
                parts.append(f"the probe did not cover its trainable parameters {_names(extra)}")
            raise ValueError(
                "; ".join(parts) + ": is this the model that was probed (same architecture and "
                "parameter names)?"
            )
        return params

    def _lr(self, group: Group, default_lr: float | None) -> float:
        for value in (group.lr, default_lr, self.single_group_lr):
            if value is not None and math.isfinite(value) and value > 0:
                return value
        raise ValueError(
            f"group {group.name!r} has no usable learning rate (flags: "
            f"{', '.join(group.flags) or 'none'}); pass default_lr=..."
        )

    # --- other shapes --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The whole recommendation, JSON-ready (as the API returns it)."""
        return self.data.model_dump(mode="json")

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, job_id: str | None = None) -> Recommendation:
        return cls(data, job_id=job_id)

    @classmethod
    def from_json(cls, text: str | bytes, *, job_id: str | None = None) -> Recommendation:
        return cls(RecommendationData.model_validate_json(text), job_id=job_id)

    def to_dataframe(self) -> Any:
        """One row per group (pandas must be installed: pip install pandas)."""
        pandas = _require("pandas", "Recommendation.to_dataframe needs pandas: pip install pandas")
        rows = [
            {
                "group": g.name,
                "params": g.numel,
                "lr": g.lr,
                "lr_low": g.interval[0],
                "lr_high": g.interval[1],
                "eta": g.eta,
                "flags": ", ".join(g.flags),
            }
            for g in self.groups
        ]
        return pandas.DataFrame(rows).set_index("group")

    def table(self) -> str:
        """A plain-text per-group table, the global figures and the notes."""
        rows = [("group", "params", "lr", "interval (10-90%)", "eta", "flags")]
        for g in self.groups:
            rows.append(
                (
                    g.name,
                    f"{g.numel:,}",
                    _num(g.lr),
                    _interval(g.interval),
                    _num(g.eta),
                    ", ".join(g.flags) or "-",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(
            f"single-group lr: {_num(self.single_group_lr)} "
            f"(interval {_interval(self.single_group_interval)})"
        )
        lines.append(
            f"optimizer: {self.optimizer.get('name', '?')}, method {self.method_version}, "
            f"cost: {self.data.cost.batches} batches, {self.data.cost.seconds:.1f} s on "
            f"{self.data.cost.device}"
        )
        # The notes are how the probe says it is unsure (each flag has one): never left out.
        lines += [f"note: {note}" for note in self.notes] or ["no notes"]
        return "\n".join(lines)

    def plot(self, ax: Any = None) -> Any:
        """The per-group rates on a log axis, 10–90 % intervals as whiskers, flagged groups
        marked, and the single-group rate as a dashed line. Needs matplotlib
        (``pip install 'lrprobe[plot]'``); draws on ``ax`` or a new figure and returns the Axes.
        """
        if ax is None:
            pyplot = _require(
                "matplotlib.pyplot", "Recommendation.plot needs matplotlib: pip install matplotlib"
            )
            ax = pyplot.figure().add_subplot()
        shown = [g for g in self.groups if g.lr is not None and g.lr > 0]
        xs = list(range(len(shown)))
        lows = [g.lr - (g.interval[0] or g.lr) for g in shown]  # type: ignore[operator]
        highs = [(g.interval[1] or g.lr) - g.lr for g in shown]  # type: ignore[operator]
        ax.errorbar(
            xs, [g.lr for g in shown], yerr=[lows, highs], fmt="o", capsize=4,
            label="recommended lr (10–90 % interval)",
        )  # fmt: skip
        flagged = [(x, g.lr) for x, g in zip(xs, shown, strict=True) if g.flags]
        if flagged:
            ax.scatter(*zip(*flagged, strict=True), marker="x", s=80, color="C3", label="flagged")
        if self.single_group_lr:
            ax.axhline(self.single_group_lr, linestyle="--", color="grey", label="single group")
        ax.set_yscale("log")
        ax.set_xticks(xs, [g.name for g in shown], rotation=45, ha="right")
        ax.set_ylabel("learning rate")
        ax.set_title(f"lrprobe: {self.optimizer.get('name', '?')} per group")
        ax.legend(fontsize="small")
        return ax

    def _repr_html_(self) -> str:
        """A table for notebooks (Jupyter shows it instead of the text repr)."""
        head = "".join(f"<th>{h}</th>" for h in ("group", "params", "lr", "interval", "flags"))
        rows = "".join(
            f"<tr><td>{html.escape(g.name)}</td><td>{g.numel:,}</td><td>{_num(g.lr)}</td>"
            f"<td>{_interval(g.interval)}</td><td>{html.escape(', '.join(g.flags))}</td></tr>"
            for g in self.groups
        )
        title = f"Recommendation for job {html.escape(self.job_id)}" if self.job_id else (
            "Recommendation"
        )  # fmt: skip
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        notes = f"<p>Notes:</p><ul>{notes}</ul>" if notes else "<p>No notes.</p>"
        return (
            f"<div class='lrprobe'><strong>{title}</strong> "
            f"({html.escape(str(self.optimizer.get('name', '?')))})"
            f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
            f"<p>single-group lr: {_num(self.single_group_lr)} "
            f"(interval {_interval(self.single_group_interval)})</p>{notes}</div>"
        )

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        head = f"Recommendation(job={self.job_id})" if self.job_id else "Recommendation()"
        return f"{head}\n{self.table()}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Recommendation) and self.data == other.data

    __hash__ = None  # type: ignore[assignment]


def _require(module: str, message: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(message) from None


def _ids(model: Any) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:5])
    return shown + (f" (and {len(names) - 5} more)" if len(names) > 5 else "")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _interval(interval: Interval) -> str:
    lo, hi = interval
    return f"{_num(lo)} – {_num(hi)}"
