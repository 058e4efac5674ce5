"""A version's learning curves as the geometry of small inline SVG charts (the templates draw them): its
`learning_curve` (what its kind optimises, on training and held-out data), or for versions made before that existed
one chart per quantity of its per-epoch `history`, the training and the validation series of a quantity on one
chart. No plotting library: a few polylines need none, and the page stays one request with no image files."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bookrec.model_store.store import CURVE_AXES

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
    x_label: str = "epoch"


def version_charts(metadata: dict[str, Any]) -> list[Chart]:
    """The charts of a version's metadata: its `learning_curve` when it has one with a finite point, else those of
    its `history` (`learning_curves`)."""
    curve = metadata.get("learning_curve")
    chart = curve_chart(curve) if isinstance(curve, dict) else None
    return [chart] if chart is not None else learning_curves(metadata.get("history"))


def curve_chart(curve: dict[str, Any]) -> Chart | None:
    """The chart of a `learning_curve` (metadata.json): its training and validation series along its `x` (l2 on a
    log scale), titled with its measure; None when neither series has a finite point."""
    xs = curve.get("values")
    if not isinstance(xs, list):
        return None
    log = curve.get("x") == "l2"
    series: dict[str, tuple[tuple[float, float], ...]] = {}
    for name in ("training", "validation"):
        values = curve.get(name)
        if isinstance(values, list) and len(values) == len(xs):
            points = tuple(
                sorted(
                    (float(x), float(v)) for x, v in zip(xs, values) if _number(x) and _number(v) and (x > 0 or not log)
                )
            )
            if points:
                series[name] = points
    if not series:
        return None
    axis = str(curve.get("x", "epoch"))
    return _chart(str(curve.get("measure") or "learning curve"), series, CURVE_AXES.get(axis, axis), log)


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


def _finite(values: object) -> tuple[tuple[float, float], ...]:
    """(epoch from 1, value) for each finite number of `values`."""
    if not isinstance(values, list):
        return ()
    return tuple((float(epoch), float(v)) for epoch, v in enumerate(values, start=1) if _number(v))


def _number(value: object) -> bool:
    """Whether `value` is a finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _chart(
    title: str, series: dict[str, tuple[tuple[float, float], ...]], x_label: str = "epoch", log_x: bool = False
) -> Chart:
    along = sorted({x for points in series.values() for x, _ in points})
    scale = math.log10 if log_x else float
    first, last = scale(along[0]), scale(along[-1])
    values = [v for points in series.values() for _, v in points]
    low, high = min(values), max(values)
    if high == low:
        pad = abs(high) * 0.05 or 1.0
        low, high = low - pad, high + pad

    def x(at: float) -> float:
        return (LEFT + RIGHT) / 2 if last == first else LEFT + (scale(at) - first) * (RIGHT - LEFT) / (last - first)

    def y(value: float) -> float:
        return BOTTOM - (value - low) * (BOTTOM - TOP) / (high - low)

    lines = tuple(
        Line(label, tuple((x(e), y(v)) for e, v in points), tuple(v for _, v in points))
        for label, points in series.items()
    )
    x_ticks = tuple((x(at), f"{at:.4g}") for at in sorted({along[0], along[len(along) // 2], along[-1]}))
    y_ticks = tuple((y(v), f"{v:.4g}") for v in (low, (low + high) / 2, high))
    return Chart(title, lines, x_ticks, y_ticks, x_label=x_label)
