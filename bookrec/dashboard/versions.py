"""What the dashboard shows of model versions: the store's list, and one version's metadata with its metrics beside the
baselines' and its learning curves. Read from the model store only (metadata.json, decision.json, production.json)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bookrec.dashboard.charts import Chart, version_charts
from bookrec.model_store.store import LOWER_IS_BETTER, ModelStore, data_summary

BETTER, WORSE = "better", "worse"


@dataclass(frozen=True)
class MetricRow:
    """One metric: the version's value, each baseline's, how the version stands against them (`better` than every
    one, `worse` than one at least, None for a tie or nothing to compare), and whether the retrain gate compares it."""

    name: str
    model: float | None
    baselines: tuple[float | None, ...]
    standing: str | None
    gate: bool


@dataclass(frozen=True)
class Metrics:
    """A version's metrics table: the baselines' names (the columns after the version's), one row per metric, and the
    counts the evaluation recorded beside them (whole numbers such as `test_rows`: what it was measured on)."""

    baselines: tuple[str, ...]
    rows: tuple[MetricRow, ...]
    counts: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class VersionView:
    """One version as its page shows it."""

    version: str
    metadata: dict[str, Any]
    decision: dict[str, Any] | None
    production: bool
    data: dict[str, Any] | None
    metrics: Metrics
    curves: list[Chart]


def version_view(models: ModelStore, version: str) -> VersionView:
    """`version`'s page: VersionNotFound if the store has no such version, ValidationError for a malformed id,
    CorruptVersion for an unreadable metadata.json."""
    metadata = models.metadata(version)
    return VersionView(
        version=version,
        metadata=metadata,
        decision=models.decision(version),
        production=models.production() == version,
        data=data_summary(metadata),
        metrics=metrics_table(metadata),
        curves=version_charts(metadata),
    )


def metrics_table(metadata: dict[str, Any]) -> Metrics:
    """The version's `metrics` beside each of its `baselines` (as metadata.json records them), in the order recorded;
    the whole-number entries of `metrics` (row and reader counts) apart, as `counts`."""
    model = metadata.get("metrics") if isinstance(metadata.get("metrics"), dict) else {}
    raw = metadata.get("baselines") if isinstance(metadata.get("baselines"), dict) else {}
    baselines = {name: values for name, values in raw.items() if isinstance(values, dict)}
    counts = tuple((name, value) for name, value in model.items() if _number(value) and isinstance(value, int))
    names = dict.fromkeys(name for values in (model, *baselines.values()) for name in values if _number(values[name]))
    gate = metadata.get("gate_metric")
    rows = []
    for name in (n for n in names if n not in dict(counts)):
        value = model.get(name) if _number(model.get(name)) else None
        others = tuple(values[name] if _number(values.get(name)) else None for values in baselines.values())
        rows.append(MetricRow(name, value, others, _standing(name, value, others), name == gate))
    return Metrics(tuple(baselines), tuple(rows), counts)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _standing(name: str, value: float | None, baselines: tuple[float | None, ...]) -> str | None:
    """`better` when `value` beats every baseline value of metric `name` (lower for errors, higher otherwise), `worse`
    when one baseline beats it, None for a tie or nothing to compare."""
    known = [b for b in baselines if b is not None]
    if value is None or not known:
        return None
    sign = -1 if name in LOWER_IS_BETTER else 1
    if all(sign * (value - b) > 0 for b in known):
        return BETTER
    if any(sign * (value - b) < 0 for b in known):
        return WORSE
    return None
