"""Charts drawn as SVG on the server: no script, no external host, readable by screen readers
(each chart has a <title> and <desc>, each mark a <title>) and testable as markup.

Colours come from CSS classes (``static/dashboard.css``), so the dark theme restyles them;
only the heatmap computes its fills.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

from lrprobe.client.schemas import GroupRecommendation, ScaleCheck

WIDTH = 1000  # full-width charts; half-width ones use HALF
HALF = 540
ROW = 26
MAX_LABEL_CHARS = 28
MAX_HEATMAP = 48


def fmt(value: float | None, digits: int = 3) -> str:
    """A number as an engineer reads it: 3 significant digits, '—' when missing."""
    if value is None or not math.isfinite(value):
        return "—"
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e5:
        return f"{value:.{digits}g}"
    return f"{value:.{digits - 1}e}".replace("e-0", "e-").replace("e+0", "e")


def _short(name: str) -> str:
    return name if len(name) <= MAX_LABEL_CHARS else "…" + name[-(MAX_LABEL_CHARS - 1) :]


def _label_width(names: Sequence[str]) -> int:
    longest = max((len(_short(n)) for n in names), default=4)
    return min(230, 24 + 7 * longest)


def _open(width: int, height: int, title: str, desc: str, cls: str) -> str:
    return (
        f'<svg class="chart {cls}" viewBox="0 0 {width} {height}" width="{width}" role="img" '
        f'aria-labelledby="{cls}-title {cls}-desc" xmlns="http://www.w3.org/2000/svg" '
        f'preserveAspectRatio="xMinYMin meet">'
        f'<title id="{cls}-title">{escape(title)}</title>'
        f'<desc id="{cls}-desc">{escape(desc)}</desc>'
    )


def _positive(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v) and v > 0]


class LogAxis:
    def __init__(self, values: Sequence[float], left: float, right: float) -> None:
        low, high = min(values), max(values)
        self.lo = math.floor(math.log10(low) - 0.15)
        self.hi = math.ceil(math.log10(high) + 0.15)
        if self.hi - self.lo < 2:
            self.lo -= 1
            self.hi += 1 if self.hi - self.lo < 2 else 0
        self.left, self.right = left, right

    def x(self, value: float) -> float:
        t = (math.log10(value) - self.lo) / (self.hi - self.lo)
        return self.left + t * (self.right - self.left)

    def ticks(self) -> list[int]:
        step = max(1, math.ceil((self.hi - self.lo) / 8))
        return list(range(self.lo, self.hi + 1, step))


def _decade(exponent: int) -> str:
    return {-2: "0.01", -1: "0.1", 0: "1", 1: "10", 2: "100"}.get(exponent, f"1e{exponent}")


def lr_chart(groups: Sequence[GroupRecommendation], single_group_lr: float | None) -> Markup:
    """Horizontal bars on a log axis: one per group, whiskers for the interval, flagged groups
    marked, and the single-group learning rate as a dashed reference line."""
    names = [g.name for g in groups]
    label_w = _label_width(names)
    values = _positive([v for g in groups for v in (g.lr, *g.lr_interval)] + [single_group_lr]) or [
        1.0
    ]
    top, bottom = 34, 34
    height = top + ROW * max(1, len(groups)) + bottom
    axis = LogAxis(values, label_w, WIDTH - 70)
    flagged = sum(1 for g in groups if g.flags)
    parts = [
        _open(
            WIDTH, height, "Recommended learning rate per group (log scale)",
            f"{len(groups)} groups; bars show the recommended learning rate, whiskers its "
            f"bootstrap interval; {flagged} flagged; dashed line: single-group learning rate "
            f"{fmt(single_group_lr)}.",
            "lr-chart",
        )
    ]  # fmt: skip
    base_y = top + ROW * len(groups)
    for exp in axis.ticks():
        x = axis.x(10.0**exp)
        parts.append(
            f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{top - 6}" y2="{base_y}"/>'
            f'<text class="tick" x="{x:.1f}" y="{base_y + 16}" text-anchor="middle">'
            f"{_decade(exp)}</text>"
        )
    parts.append(
        f'<text class="axis-title" x="{(label_w + WIDTH - 70) / 2:.0f}" y="{base_y + 31}" '
        'text-anchor="middle">learning rate (log scale)</text>'
    )
    origin = axis.left
    for i, group in enumerate(groups):
        y = top + ROW * i
        mid = y + ROW / 2
        cls = "bar flagged" if group.flags else "bar"
        flags = f" — flagged: {', '.join(group.flags)}" if group.flags else ""
        low, high = group.lr_interval
        tip = (
            f"{group.name}: lr {fmt(group.lr)} (interval {fmt(low)} – {fmt(high)}), "
            f"{group.numel:,} parameters{flags}"
        )
        parts.append(
            f'<g class="bar-row" data-group="{escape(group.name)}"><title>{escape(tip)}</title>'
        )
        marker = "⚑ " if group.flags else ""
        parts.append(
            f'<text class="bar-label{" flagged-label" if group.flags else ""}" x="{label_w - 8}" '
            f'y="{mid + 4:.1f}" text-anchor="end">{marker}{escape(_short(group.name))}</text>'
        )
        if group.lr is not None and group.lr > 0:
            x = axis.x(group.lr)
            parts.append(
                f'<rect class="{cls}" x="{origin:.1f}"'
                f' y="{y + 5}" width="{max(1.0, x - origin):.1f}" '
                f'height="{ROW - 10}" rx="2"/>'
            )
            end = x
            if low and high and low > 0 and high > 0 and high > low:
                x0, x1 = axis.x(low), axis.x(high)
                end = max(end, x1)
                parts.append(
                    f'<path class="whisker" d="M{x0:.1f} {mid:.1f}H{x1:.1f}M{x0:.1f} {mid - 6:.1f}'
                    f'V{mid + 6:.1f}M{x1:.1f} {mid - 6:.1f}V{mid + 6:.1f}"/>'
                )
            parts.append(
                f'<text class="value" x="{end + 6:.1f}" y="{mid + 4:.1f}">{fmt(group.lr)}</text>'
            )
        else:
            parts.append(
                f'<text class="value muted" x="{origin + 6:.1f}" y="{mid + 4:.1f}">no rate</text>'
            )
        parts.append("</g>")
    if single_group_lr is not None and single_group_lr > 0:
        x = axis.x(single_group_lr)
        parts.append(
            f'<g class="reference"><title>single-group learning rate {fmt(single_group_lr)}</title>'
            f'<line class="ref-line" x1="{x:.1f}" x2="{x:.1f}" y1="{top - 10}" y2="{base_y}"/>'
            f'<text class="ref-label" x="{x:.1f}" y="{top - 14}" text-anchor="middle">'
            f"single group {fmt(single_group_lr)}</text></g>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _diverging(value: float | None) -> str:
    """-1 blue, 0 neutral grey, +1 orange-red (colour-blind safe pair)."""
    if value is None or not math.isfinite(value):
        return "#888888"
    t = max(-1.0, min(1.0, value))
    neutral = (226, 228, 233)
    end = (33, 102, 172) if t < 0 else (214, 96, 77)
    mix = [round(n + (e - n) * abs(t)) for n, e in zip(neutral, end, strict=True)]
    return "#{:02x}{:02x}{:02x}".format(*mix)


def coupling_heatmap(names: Sequence[str], matrix: Sequence[Sequence[float | None]]) -> Markup:
    """The normalised group-coupling matrix H̄ as a heatmap (−1 … 1)."""
    n = len(matrix)
    if n == 0 or n > MAX_HEATMAP or len(names) != n:
        return Markup("")
    label_w = _label_width(names)
    cell = max(12, min(44, (HALF - label_w - 40) // n))
    top = 14
    size = cell * n
    height = top + size + 118
    width = max(label_w + size + 40, label_w + 200)
    parts = [
        _open(
            width, height, "Group coupling (normalised H̄)",
            f"{n}×{n} matrix of curvature coupling between groups, from −1 (blue) through 0 "
            "(grey) to +1 (red); the diagonal is 1.",
            "coupling-chart",
        )
    ]  # fmt: skip
    for i, row in enumerate(matrix):
        y = top + i * cell
        parts.append(
            f'<text class="bar-label" x="{label_w - 8}" y="{y + cell / 2 + 4:.1f}" '
            f'text-anchor="end">{escape(_short(names[i]))}</text>'
        )
        for j, value in enumerate(row):
            x: float = label_w + j * cell
            colour = _diverging(value)
            parts.append(
                f'<rect class="cell" x="{x}" y="{y}" width="{cell - 1}" height="{cell - 1}" '
                f'fill="{colour}"><title>{escape(names[i])} × {escape(names[j])}: '
                f"{fmt(value)}</title></rect>"
            )
            if n <= 8 and value is not None:
                dark = abs(value) > 0.55
                parts.append(
                    f'<text class="cell-value{" on-dark" if dark else ""}" x="{x + cell / 2:.1f}" '
                    f'y="{y + cell / 2 + 4:.1f}" text-anchor="middle">{value:.2f}</text>'
                )
    for j, name in enumerate(names):
        x = label_w + j * cell + cell / 2
        y = top + size + 8
        parts.append(
            f'<text class="tick" transform="translate({x:.1f} {y}) rotate(40)">'
            f"{escape(_short(name))}</text>"
        )
    legend_y = height - 26
    parts.append(
        '<defs><linearGradient id="coupling-gradient">'
        f'<stop offset="0" stop-color="{_diverging(-1)}"/><stop offset="0.5" '
        f'stop-color="{_diverging(0)}"/><stop offset="1" stop-color="{_diverging(1)}"/>'
        "</linearGradient></defs>"
        f'<rect x="{label_w}" y="{legend_y}" width="160"'
        f' height="10" fill="url(#coupling-gradient)"/>'
        f'<text class="tick" x="{label_w}" y="{legend_y + 22}">−1</text>'
        f'<text class="tick" x="{label_w + 80}" y="{legend_y + 22}" text-anchor="middle">0</text>'
        f'<text class="tick" x="{label_w + 160}" y="{legend_y + 22}" text-anchor="end">+1</text>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))


def eta_spread_chart(groups: Sequence[GroupRecommendation]) -> Markup:
    """Per group: the median η over probe batches with its inter-quartile range, the η used
    (diamond) and the fraction of batches with a negative η."""
    rows = [(g, g.spread.median, g.spread.iqr or 0.0) for g in groups]
    numbers = [
        v
        for g, med, iqr in rows
        for v in (
            (med - iqr / 2) if med is not None else None,
            (med + iqr / 2) if med is not None else None,
            g.eta,
        )
        if v is not None and math.isfinite(v)
    ]
    if not numbers:
        return Markup("")
    label_w = _label_width([g.name for g in groups])
    lo, hi = min([0.0, *numbers]), max([0.0, *numbers])
    if hi == lo:
        hi = lo + 1.0
    pad = (hi - lo) * 0.06
    lo, hi = lo - (pad if lo < 0 else 0), hi + pad
    left, right = label_w, WIDTH - 110
    top = 22
    height = top + ROW * len(groups) + 40

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * (right - left)

    parts = [
        _open(
            WIDTH, height, "Spread of η across probe batches",
            "Per group: median η over the probe batches (dot) with its inter-quartile range "
            "(band), the η used for the recommendation (diamond), and the share of batches "
            "whose η was negative.",
            "eta-chart",
        )
    ]  # fmt: skip
    base_y = top + ROW * len(groups)
    for k in range(6):
        v = lo + (hi - lo) * k / 5
        parts.append(
            f'<line class="grid" x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{top - 4}" y2="{base_y}"/>'
            f'<text class="tick" x="{x(v):.1f}" y="{base_y + 16}"'
            f' text-anchor="middle">{fmt(v, 2)}</text>'
        )
    if lo < 0 < hi:
        parts.append(
            f'<line class="zero" x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{top - 4}" y2="{base_y}"/>'
        )
    parts.append(f'<text class="tick" x="{right + 12}" y="{top - 6}">negative</text>')
    for i, (group, median, iqr) in enumerate(rows):
        mid = top + ROW * i + ROW / 2
        neg = group.spread.negative_fraction
        tip = (
            f"{group.name}: median η {fmt(median)}, IQR {fmt(iqr)}, η used {fmt(group.eta)}, "
            f"negative in {fmt(None if neg is None else neg * 100, 2)}% of batches"
        )
        parts.append(f'<g class="spread-row"><title>{escape(tip)}</title>')
        parts.append(
            f'<text class="bar-label" x="{label_w - 8}" y="{mid + 4:.1f}" text-anchor="end">'
            f"{escape(_short(group.name))}</text>"
        )
        if median is not None and math.isfinite(median):
            a, b = x(median - iqr / 2), x(median + iqr / 2)
            parts.append(
                f'<rect class="iqr" x="{a:.1f}" y="{mid - 6:.1f}" width="{max(2.0, b - a):.1f}" '
                f'height="12" rx="3"/><circle class="median"'
                f' cx="{x(median):.1f}" cy="{mid:.1f}" r="4"/>'
            )
        if group.eta is not None and math.isfinite(group.eta):
            e = x(group.eta)
            parts.append(
                f'<path class="eta-used" d="M{e:.1f} {mid - 6:.1f}L{e + 6:.1f} {mid:.1f}'
                f'L{e:.1f} {mid + 6:.1f}L{e - 6:.1f} {mid:.1f}Z"/>'
            )
        neg_text = "—" if neg is None else f"{neg * 100:.0f}%"
        parts.append(
            f'<text class="value{" warn" if neg else ""}" x="{right + 12}" y="{mid + 4:.1f}">'
            f"{neg_text}</text></g>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def scale_check_chart(checks: Sequence[ScaleCheck]) -> Markup:
    """Predicted vs realised loss decrease at each tried step scale (paired bars)."""
    usable = [c for c in checks if c.predicted is not None or c.realised is not None]
    if not usable:
        return Markup("")
    values = [abs(v) for c in usable for v in (c.predicted, c.realised) if v is not None]
    peak = max(values) or 1.0
    label_w, right = 70, HALF - 60
    pair = 2 * 16 + 12
    top = 26
    height = top + pair * len(usable) + 34
    parts = [
        _open(
            HALF, height, "Predicted vs realised loss decrease",
            "For each step scale: the loss decrease the model predicts (light bar) and the "
            "decrease measured on held-out batches (dark bar).",
            "scale-chart",
        )
    ]  # fmt: skip
    parts.append(
        f'<rect class="predicted" x="{label_w}" y="4" width="12" height="10"/>'
        f'<text class="tick" x="{label_w + 16}" y="13">predicted</text>'
        f'<rect class="realised" x="{label_w + 100}" y="4" width="12" height="10"/>'
        f'<text class="tick" x="{label_w + 116}" y="13">realised</text>'
    )
    for i, check in enumerate(usable):
        y = top + pair * i
        parts.append(
            f'<text class="bar-label" x="{label_w - 8}" y="{y + 20}" text-anchor="end">'
            f"× {fmt(check.scale, 2)}</text>"
        )
        for k, (cls, value) in enumerate(
            (("predicted", check.predicted), ("realised", check.realised))
        ):
            yy = y + k * 16
            decrease = None if value is None else -value
            if decrease is None:
                parts.append(
                    f'<text class="value muted" x="{label_w + 4}" y="{yy + 12}">not measured</text>'
                )
                continue
            w = abs(decrease) / peak * (right - label_w)
            parts.append(
                f'<rect class="{cls}{" increase" if decrease < 0 else ""}" x="{label_w}" y="{yy}" '
                f'width="{max(1.0, w):.1f}" height="14"><title>{cls} loss decrease at scale '
                f"{fmt(check.scale)}: {fmt(decrease)}</title></rect>"
                f'<text class="value" x="{label_w + w + 6:.1f}"'
                f' y="{yy + 12}">{fmt(decrease)}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def calibration_chart(checks: Sequence[ScaleCheck], chosen: float | None) -> Markup:
    """The trajectory method's calibration runs: for each candidate scale, the change of the
    training loss over a short run of the optimizer at that scale (one bar each; nothing here is
    a prediction). ``chosen``: the scale the recommendation uses, marked."""
    if not checks:
        return Markup("")
    changes = [c.realised for c in checks if c.realised is not None]
    peak = max((abs(v) for v in changes), default=1.0) or 1.0
    label_w, right, row = 70, HALF - 90, 24
    top = 8
    height = top + row * len(checks) + 8
    parts = [
        _open(
            HALF, height, "Training-loss change per candidate scale",
            "For each candidate scale of the recommended rates: how much the training loss "
            "changed over a short calibration run of the optimizer (a bar to the right: it fell).",
            "scale-chart",
        )
    ]  # fmt: skip
    for i, check in enumerate(checks):
        y = top + row * i
        mark = " (chosen)" if chosen is not None and check.scale == chosen else ""
        parts.append(
            f'<text class="bar-label" x="{label_w - 8}" y="{y + 14}" text-anchor="end">'
            f"× {fmt(check.scale, 2)}</text>"
        )
        if check.realised is None:
            parts.append(
                f'<text class="value warn" x="{label_w + 4}" y="{y + 14}">diverged{mark}</text>'
            )
            continue
        decrease = -check.realised
        w = abs(decrease) / peak * (right - label_w)
        parts.append(
            f'<rect class="realised{" increase" if decrease < 0 else ""}" x="{label_w}" '
            f'y="{y + 2}" width="{max(1.0, w):.1f}" height="16"><title>training-loss change '
            f"at scale {fmt(check.scale)}: {fmt(check.realised)}</title></rect>"
            f'<text class="value" x="{label_w + w + 6:.1f}" y="{y + 14}">'
            f"{fmt(check.realised)}{mark}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def loss_line(losses: Sequence[float | None]) -> Markup:
    """The training loss along the probe's trajectory (a small line chart)."""
    points = [(i, v) for i, v in enumerate(losses) if v is not None and math.isfinite(v)]
    if len(points) < 2:
        return Markup("")
    height, left, right, top, bottom = 160, 50, HALF - 20, 12, 28
    lo, hi = min(v for _, v in points), max(v for _, v in points)
    hi = hi if hi > lo else lo + 1.0
    last = max(i for i, _ in points) or 1

    def xy(i: int, v: float) -> tuple[float, float]:
        return (
            left + i / last * (right - left),
            top + (hi - v) / (hi - lo) * (height - top - bottom),
        )

    path = "M" + "L".join(f"{x:.1f} {y:.1f}" for x, y in (xy(i, v) for i, v in points))
    parts = [
        _open(
            WIDTH,
            height,
            "Loss along the probe trajectory",
            f"Training loss over {len(points)} probe steps, from {fmt(points[0][1])} to "
            f"{fmt(points[-1][1])}.",
            "loss-chart",
        ),
        f'<text class="tick" x="{left - 6}" y="{top + 8}" text-anchor="end">{fmt(hi)}</text>',
        (
            f'<text class="tick" x="{left - 6}" y="{height - bottom}"'
            f' text-anchor="end">{fmt(lo)}</text>'
        ),
        (
            f'<text class="tick" x="{(left + right) / 2}"'
            f' y="{height - 6}" text-anchor="middle">probe step</text>'
        ),
        (
            f'<line class="grid" x1="{left}" x2="{right}"'
            f' y1="{height - bottom}" y2="{height - bottom}"/>'
        ),
        f'<path class="loss-path" d="{path}"/>',
    ]
    for i, v in points:
        x, y = xy(i, v)
        parts.append(
            f'<circle class="loss-point" cx="{x:.1f}" cy="{y:.1f}"'
            f' r="3"><title>step {i}: {fmt(v)}</title></circle>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


# Line colours of the run-history chart, one per group (cycled); readable on both themes.
_SERIES = ("#2f6fdf", "#d9534f", "#2e9d5b", "#c48a00", "#8e5bd8", "#16a2b8", "#e0702b", "#777")


def run_history_chart(points: Sequence[tuple[int, dict[str, float]]]) -> Markup:
    """A re-probed run's rates: one line per group over training steps (log scale), a dot
    per recommendation. ``points`` are (training step, {group: lr}) in step order."""
    values = _positive([lr for _, lrs in points for lr in lrs.values()])
    if len(points) < 1 or not values:
        return Markup("")
    groups = sorted({g for _, lrs in points for g in lrs})
    height, left, right, top, bottom = 240, 70, WIDTH - 190, 14, 34
    lo, hi = math.log10(min(values)), math.log10(max(values))
    if hi - lo < 0.5:
        lo, hi = lo - 0.25, hi + 0.25
    first, last = points[0][0], points[-1][0]
    span = (last - first) or 1

    def xy(step: int, lr: float) -> tuple[float, float]:
        return (
            left + (step - first) / span * (right - left),
            top + (hi - math.log10(lr)) / (hi - lo) * (height - top - bottom),
        )

    parts = [
        _open(
            WIDTH, height, "Learning rate per group over the run (log scale)",
            f"{len(points)} recommendations of this run from step {first} to step {last}, "
            f"{len(groups)} groups.",
            "history-chart",
        ),
        f'<text class="tick" x="{left - 6}" y="{top + 8}" text-anchor="end">{fmt(10**hi)}</text>',
        f'<text class="tick" x="{left - 6}" y="{height - bottom}" text-anchor="end">'
        f"{fmt(10**lo)}</text>",
        f'<text class="tick" x="{(left + right) / 2}" y="{height - 2}" text-anchor="middle">'
        "training step</text>",
        f'<line class="grid" x1="{left}" x2="{right}" y1="{height - bottom}" '
        f'y2="{height - bottom}"/>',
    ]  # fmt: skip
    steps = sorted({s for s, _ in points})
    shown = steps if len(steps) <= 10 else [steps[0], steps[-1]]
    for s in shown:
        x = xy(s, 10**hi)[0]
        parts.append(
            f'<text class="tick" x="{x:.1f}" y="{height - bottom + 14}" text-anchor="middle">'
            f"{s}</text>"
        )
    for i, group in enumerate(groups):
        colour = _SERIES[i % len(_SERIES)]
        series = [(s, lrs[group]) for s, lrs in points if lrs.get(group, 0) > 0]
        if not series:
            continue
        path = "M" + "L".join(f"{x:.1f} {y:.1f}" for x, y in (xy(s, v) for s, v in series))
        parts.append(f'<g class="history-line" data-group="{escape(group)}">')
        parts.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for s, v in series:
            x, y = xy(s, v)
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"><title>'
                f"{escape(group)} at step {s}: lr {fmt(v)}</title></circle>"
            )
        label_y = top + 16 * i + 8
        parts.append(
            f'<rect x="{right + 20}" y="{label_y - 8}" width="10" height="10" fill="{colour}"/>'
            f'<text class="tick" x="{right + 36}" y="{label_y + 1}">{escape(_short(group))}</text>'
            "</g>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
