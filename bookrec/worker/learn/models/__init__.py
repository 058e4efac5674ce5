"""The model kinds bookrec trains, by name. Each module defines one Keras model and its `SPEC`."""

from __future__ import annotations

from bookrec.shared.errors import ValidationError
from bookrec.worker.learn.models import biased_mf, deep, ease, mf, mult_dae, softmax_mf
from bookrec.worker.learn.models.base import RANKING, RATING, ModelSpec

KINDS: dict[str, ModelSpec] = {
    spec.kind: spec for spec in (mult_dae.SPEC, ease.SPEC, softmax_mf.SPEC, biased_mf.SPEC, mf.SPEC, deep.SPEC)
}
DEFAULT_KIND = mult_dae.SPEC.kind

__all__ = ["KINDS", "DEFAULT_KIND", "RANKING", "RATING", "ModelSpec", "get_spec"]


def get_spec(kind: str | None) -> ModelSpec:
    """The spec of `kind` (the default ranking kind when None); ValidationError naming the known kinds otherwise."""
    kind = kind or DEFAULT_KIND
    try:
        return KINDS[kind]
    except KeyError:
        raise ValidationError(f"unknown model kind {kind!r}; choose one of: {', '.join(KINDS)}") from None
