"""A one-page picture of a model version: its learning curve (what its kind optimises, per epoch or gradient step, on
its training data and on data it did not fit) and the metrics its kind is judged on beside their baselines."""

from __future__ import annotations

import logging
import textwrap
from math import isfinite, nan
from pathlib import Path
from typing import Any

from bookrec.model_store.store import CURVE_AXES
from bookrec.shared.errors import ValidationError
from bookrec.shared.files import atomic_path

log = logging.getLogger(__name__)

JUDGED = {
    "ranking": (("ndcg@10", "recall@10"), ("popularity",)),
    "rating": (("rmse", "mae"), ("bias", "global_mean")),
}
"""By task: the metrics a kind is judged on (the gate's first) and the baselines drawn beside them. A ranking kind's
rmse is its `bias` head's, so it is not drawn."""


def figure(metadata: dict) -> Any:
    """The picture of one version's metadata as a matplotlib Figure: the learning curve (`learning_curve`; the
    per-epoch `history` of versions made before it) on the left, the judged metrics beside their baselines on the
    right. Anything missing leaves a note in its panel instead of failing."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    curve_ax, metrics_ax = fig.subplots(1, 2, width_ratios=[3, 2])
    fig.suptitle(f"{metadata.get('version', 'model')} ({metadata.get('kind', 'unknown kind')})")
    curve = metadata.get("learning_curve")
    if isinstance(curve, dict) and curve.get("values"):
        _learning_curve(curve_ax, curve, metadata.get("kind") or "model")
    else:
        _epoch_history(curve_ax, metadata.get("history"))
    _judged_metrics(metrics_ax, metadata)
    return fig


def plot_version(metadata: dict, out_path: Path) -> Path:
    """Draw `figure(metadata)` into `out_path` and return it; the image format follows the suffix (.png, .svg,
    .pdf). The file is replaced atomically and is readable by everyone (mode 0644), like any other output."""
    return _save_atomic(figure(metadata), Path(out_path))


def _learning_curve(ax: Any, curve: dict, kind: str) -> None:
    x = curve.get("x", "epoch")
    points = sorted(range(len(curve["values"])), key=lambda i: curve["values"][i])
    values = [curve["values"][i] for i in points]
    verb = "chooses l2 on" if x == "l2" else "optimises"
    ax.set_title(f"what {kind} {verb}: {curve.get('measure', '?')}")
    for name, label in (("training", "training data"), ("validation", "held out")):
        series = curve.get(name)
        if isinstance(series, list) and len(series) == len(values):
            ax.plot(values, [series[i] for i in points], marker="o", markersize=3, label=label)
    validation = curve.get("validation")
    if isinstance(validation, list) and len(validation) == len(values):
        _mark_best(ax, values, [validation[i] for i in points], bool(curve.get("lower_is_better", True)), x)
    if x == "l2":
        ax.set_xscale("log")
    ax.set_xlabel(CURVE_AXES.get(x, x))
    ax.set_ylabel(curve.get("measure", ""))
    if curve.get("validation_on"):
        caption = "held out: " + textwrap.fill(curve["validation_on"], 95)
        ax.text(0, -0.16, caption, transform=ax.transAxes, va="top", fontsize=8, color="dimgrey")
    if ax.get_lines():
        ax.legend()
    else:
        _note(ax, "no learning curve recorded")


def _mark_best(ax: Any, values: list[float], series: list[float], lower_is_better: bool, x: str) -> None:
    """Mark the held-out curve's best point (the l2 chosen, for a search)."""
    best = (min if lower_is_better else max)(range(len(series)), key=lambda i: series[i])
    word = "chosen" if x == "l2" else "best"
    label = f"{word}: {series[best]:.4g} at {x} {values[best]:g}"
    ax.plot([values[best]], [series[best]], marker="*", markersize=12, color="black", linestyle="none", label=label)


def _epoch_history(ax: Any, history: object) -> None:
    """A version made before learning curves were recorded: every per-epoch series of its history."""
    series = {k: v for k, v in history.items() if isinstance(v, list) and v} if isinstance(history, dict) else {}
    ax.set_title("per-epoch history (recorded before learning curves)")
    if not series:
        _note(ax, "no training history recorded")
        return
    for name, values in series.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
    ax.set_xlabel("epoch")
    ax.legend()


def _task(metadata: dict) -> str:
    """The version's task: recorded, else its gate metric's, else what its metrics suggest."""
    if metadata.get("task") in JUDGED:
        return metadata["task"]
    gate = metadata.get("gate_metric")
    if gate in ("ndcg@10", "rmse"):
        return "ranking" if gate == "ndcg@10" else "rating"
    return "ranking" if "ndcg@10" in (metadata.get("metrics") or {}) else "rating"


def _judged_metrics(ax: Any, metadata: dict) -> None:
    task = _task(metadata)
    names, baselines = JUDGED[task]
    recorded = metadata.get("baselines") or {}
    sources = {"model": metadata.get("metrics") or {}, **{b: recorded.get(b) or {} for b in baselines}}
    better = "higher" if task == "ranking" else "lower"
    ax.set_title(f"judged on {names[0]} ({better} is better)")
    heights = {label: [_number(values.get(name)) for name in names] for label, values in sources.items()}
    if not any(isfinite(h) for row in heights.values() for h in row):
        _note(ax, "no metrics recorded")
        return
    width = 0.8 / len(sources)
    for i, (label, row) in enumerate(heights.items()):
        bars = ax.bar([j + i * width for j in range(len(names))], row, width, label=label)
        ax.bar_label(bars, labels=[f"{h:.4f}" if isfinite(h) else "-" for h in row], fontsize=8)
    ax.set_xticks([j + width * (len(sources) - 1) / 2 for j in range(len(names))], names)
    ratio = _ratio(heights, baselines[0])
    if ratio:
        ax.set_xlabel(f"{names[0]}: {ratio} {baselines[0]}'s")
    ax.set_ylim(0, 1.3 * max(h for row in heights.values() for h in row if isfinite(h)))  # room for the legend
    ax.legend(loc="upper right", ncols=len(sources))


def _ratio(heights: dict[str, list[float]], baseline: str) -> str | None:
    """The model's first judged metric as a multiple of `baseline`'s, e.g. "1.72x" (None if either is missing)."""
    model, base = heights["model"][0], heights[baseline][0]
    return f"{model / base:.2f}x" if isfinite(model) and isfinite(base) and base else None


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else nan


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _save_atomic(fig: Any, out_path: Path) -> Path:
    fmt = out_path.suffix.lstrip(".").lower() or "png"
    if fmt not in fig.canvas.get_supported_filetypes():
        raise ValidationError(f"cannot write a .{fmt} image; name the file .png, .svg or .pdf")
    if not out_path.parent.is_dir():
        raise ValidationError(f"cannot write {out_path}: directory {out_path.parent} does not exist")
    with atomic_path(out_path) as temp:
        fig.savefig(temp, format=fmt)
    log.info("wrote %s", out_path)
    return out_path
