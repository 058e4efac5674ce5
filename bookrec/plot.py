"""A one-page picture of a model version: learning curves, and its metrics beside the baselines'."""

from __future__ import annotations

import logging
from math import nan
from pathlib import Path
from typing import Any

from bookrec.shared.errors import ValidationError
from bookrec.shared.files import atomic_path

log = logging.getLogger(__name__)

ERROR_METRICS = ("rmse", "mae")


def plot_version(metadata: dict, out_path: Path) -> Path:
    """Draw learning curves and metrics-vs-baselines for one version's metadata into `out_path`; return it.

    Missing `history`, `metrics` or `baselines` leave a note in their panel instead of failing.
    The image format follows the file suffix (PNG by default); the file is replaced atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(15, 5), layout="constrained")
    FigureCanvasAgg(fig)
    curves, ranking, errors = fig.subplots(1, 3, width_ratios=[4, 5, 2])
    fig.suptitle(f"{metadata.get('version', 'model')} ({metadata.get('kind', 'unknown kind')})")
    _learning_curves(curves, metadata.get("history"))
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    sources = {"model": metadata.get("metrics") or {}, **(metadata.get("baselines") or {})}
    names = _metric_names(sources)
    _grouped_bars(ranking, sources, [n for n in names if "@" in n], "ranking metrics (higher is better)")
    _grouped_bars(errors, sources, [n for n in names if n in ERROR_METRICS], "rating error\n(lower is better)")
    for ax in (ranking, errors):
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncols=len(labels))
            break
    return _save_atomic(fig, Path(out_path))


def _learning_curves(ax: Any, history: object) -> None:
    series = {k: v for k, v in history.items() if isinstance(v, list) and v} if isinstance(history, dict) else {}
    ax.set_title("learning curves")
    if not series:
        _note(ax, "no training history recorded")
        return
    for name, values in series.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
    ax.set_xlabel("epoch")
    ax.legend()


def _metric_names(sources: dict[str, dict]) -> list[str]:
    """Numeric metric names across all sources, in order of first appearance."""
    names: dict[str, None] = {}
    for values in sources.values():
        if isinstance(values, dict):
            names.update((k, None) for k, v in values.items() if isinstance(v, (int, float)))
    return list(names)


def _grouped_bars(ax: Any, sources: dict[str, dict], names: list[str], title: str) -> None:
    ax.set_title(title)
    if not names:
        _note(ax, "no metrics recorded")
        return
    width = 0.8 / len(sources)
    for i, (label, values) in enumerate(sources.items()):
        heights = [float(values.get(name, nan)) if isinstance(values, dict) else nan for name in names]
        ax.bar([j + i * width for j in range(len(names))], heights, width, label=label)
    ax.set_xticks([j + width * (len(sources) - 1) / 2 for j in range(len(names))], names)


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
