"""Figures: one measured number beside the reference measured in the same run, and the table.

Machines are noisy, so a figure is read as a ratio to its reference, and a target is a
report (ok / MISS), never a failure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class Figure:
    """A measurement, its reference, and an optional target on the value or the ratio."""

    bench: str
    name: str
    value: float | None
    unit: str
    ref_name: str = ""
    ref_value: float | None = None
    # Target bounds; None means no bound. Checked by ``verdict``.
    ratio_min: float | None = None
    ratio_max: float | None = None
    value_max: float | None = None
    value_min: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.ref_value:
            return None
        return self.value / self.ref_value

    @property
    def target(self) -> str:
        parts = []
        if self.value_max is not None:
            parts.append(f"<{fmt_value(self.value_max, self.unit)}")
        if self.value_min is not None:
            bound = fmt_value(self.value_min, self.unit)
            parts.append(bound if self.unit == "bool" else f">={bound}")
        if self.ratio_min is not None:
            parts.append(f"ratio>={self.ratio_min:g}")
        if self.ratio_max is not None:
            parts.append(f"ratio<={self.ratio_max:g}")
        return " & ".join(parts)

    @property
    def verdict(self) -> str:
        """'ok', 'MISS' or '' (no target)."""
        if not self.target:
            return ""
        value, ratio = self.value, self.ratio
        checks = []
        if self.value_max is not None:
            checks.append(value is not None and value < self.value_max)
        if self.value_min is not None:
            checks.append(value is not None and value >= self.value_min)
        if self.ratio_min is not None:
            checks.append(ratio is not None and ratio >= self.ratio_min)
        if self.ratio_max is not None:
            checks.append(ratio is not None and ratio <= self.ratio_max)
        return "ok" if all(checks) else "MISS"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(ratio=self.ratio, target=self.target, verdict=self.verdict)
        return data


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def fmt_value(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "bool":
        return "yes" if value else "no"
    if unit in ("rows/s", "chunks/s"):
        return f"{value:,.0f} {unit}"
    if unit == "ms":
        return f"{value:.2f} ms" if value < 100 else f"{value:,.0f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "MB":
        return f"{value:.1f} MB"
    return f"{value:g} {unit}".strip()


def fmt_ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def render_table(figures: Iterable[Figure]) -> str:
    """A plain-text table, one row per figure: value, reference, ratio, target, verdict."""
    header = ("benchmark", "figure", "value", "reference", "ratio", "target", "")
    rows = [header]
    for fig in figures:
        ref = ""
        if fig.ref_name:
            ref = f"{fmt_value(fig.ref_value, fig.unit)} ({fig.ref_name})"
        rows.append(
            (
                fig.bench,
                fig.name,
                fmt_value(fig.value, fig.unit),
                ref,
                fmt_ratio(fig.ratio),
                fig.target,
                fig.verdict,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {2, 4}
    lines = []
    for n, row in enumerate(rows):
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
