"""A version's learning curves as the geometry of small inline SVG charts (the templates draw them): one chart per
quantity of its `history`, the training and the validation series of a quantity on one chart. No plotting library:
a few polylines need none, and the page stays one request with no image files."""

from __future__ import annotations

import math
from dataclasses import dataclass

WIDTH, HEIGHT = 360, 190
LEFT, RIGHT, TOP, BOTTOM = 56, 348, 14, 158
"""The chart's size and the plot area inside it (SVG user units); the margins hold the tick labels."""
VALIDATION_PREFIX = "val_"
"""Keras names a validation series after its training series with this prefix (`loss`, `val_loss`)."""


@dataclass(frozen=True)
class Line:
    """One series: its label, its points in SVG coordinates, its values."""

    label: str
    points: tuple[tuple[float, float], ...]
    values: tuple[float, ...]

    @property
    def path(self) -> str:
        """The points as an SVG `points` attribute."""
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in self.points)


@dataclass(frozen=True)
class Chart:
    """One quantity's curves with the ticks of both axes ((position, label) pairs) and the plot area's bounds."""

    title: str
    lines: tuple[Line, ...]
    x_ticks: tuple[tuple[float, str], ...]
    y_ticks: tuple[tuple[float, str], ...]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = RIGHT
    top: int = TOP
    bottom: int = BOTTOM


def learning_curves(history: object) -> list[Chart]:
    """The charts of a version's `history` ({name: [value per epoch]}, as metadata.json records it), one per quantity
    in the order recorded; non-finite and non-numeric values are left out (the others keep their epochs), [] when
    nothing is left to draw."""
    if not isinstance(history, dict):
        return []
    groups: dict[str, dict[str, tuple[tuple[int, float], ...]]] = {}
    for name, values in history.items():
        points = _finite(values)
        if not points:
            continue
        validation = str(name).startswith(VALIDATION_PREFIX)
        quantity = str(name)[len(VALIDATION_PREFIX) :] if validation else str(name)
        groups.setdefault(quantity, {})["validation" if validation else "training"] = points
    return [_chart(quantity, series) for quantity, series in groups.items()]


def _finite(values: object) -> tuple[tuple[int, float], ...]:
    """(epoch from 1, value) for each finite number of `values`."""
    if not isinstance(values, list):
        return ()
    return tuple(
        (epoch, float(v))
        for epoch, v in enumerate(values, start=1)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    )


def _chart(title: str, series: dict[str, tuple[tuple[int, float], ...]]) -> Chart:
    epochs = max(epoch for points in series.values() for epoch, _ in points)
    values = [v for points in series.values() for _, v in points]
    low, high = min(values), max(values)
    if high == low:
        pad = abs(high) * 0.05 or 1.0
        low, high = low - pad, high + pad

    def x(epoch: int) -> float:
        return (LEFT + RIGHT) / 2 if epochs == 1 else LEFT + (epoch - 1) * (RIGHT - LEFT) / (epochs - 1)

    def y(value: float) -> float:
        return BOTTOM - (value - low) * (BOTTOM - TOP) / (high - low)

    lines = tuple(
        Line(label, tuple((x(e), y(v)) for e, v in points), tuple(v for _, v in points))
        for label, points in series.items()
    )
    x_ticks = tuple((x(e), str(e)) for e in sorted({1, (epochs + 1) // 2, epochs}))
    y_ticks = tuple((y(v), f"{v:.4g}") for v in (low, (low + high) / 2, high))
    return Chart(title, lines, x_ticks, y_ticks)
