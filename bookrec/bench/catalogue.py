"""The benchmark's catalogue and base model, cached under `./var/bench/<size>/` so repeated runs skip both.

<size key>/data/      ratings.csv, books.csv from `bookrec.worker.learn.synth.synthesise`
<size key>/models/    a model store holding the base version: the default kind with its default
                      parameters (or the run's overrides), trained by the first run's trainer
                      and reused while the kind and parameters stay the same
<size key>/logs/      the output of the worker and ingest processes of the latest run
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bookrec.model_store.store import ModelStore
from bookrec.shared.errors import BookrecError
from bookrec.worker.learn.artifacts import SERVING_GRAPH
from bookrec.worker.learn.inputs import GOODBOOKS_BOOKS, PRESETS
from bookrec.worker.learn.synth import synthesise

Notify = Callable[[str], None]

REPO = Path(__file__).resolve().parents[2]
REAL_BOOKS = GOODBOOKS_BOOKS
"""goodbooks-10k's real books.csv, shipped with bookrec: the synthetic catalogue's books take its titles in file order
(they did when the team folder beside the checkout held it, so a cached catalogue of either time is the same)."""


@dataclass(frozen=True)
class Size:
    """A synthetic catalogue's shape."""

    name: str
    users: int
    books: int
    ratings: int
    seed: int = 0

    @property
    def key(self) -> str:
        """The cache directory name: every number that changes the files."""
        return f"{self.users}u-{self.books}b-{self.ratings}r-s{self.seed}"

    def describe(self) -> str:
        """e.g. `goodbooks: 53,424 users x 10,000 books, 981,756 ratings`."""
        return f"{self.name}: {self.users:,} users x {self.books:,} books, {self.ratings:,} ratings"


FULL = Size("goodbooks", **PRESETS["goodbooks"])
QUICK = Size("quick", users=5000, books=2000, ratings=100_000)


@dataclass(frozen=True)
class Data:
    """A catalogue on disk (ratings.csv, books.csv) and the cache directory it lives in."""

    size: Size
    root: Path
    data_dir: Path
    generated: bool  # the catalogue was synthesised by this run

    def log(self, name: str) -> Path:
        """The log file of a subprocess of this run."""
        return self.root / "logs" / f"{name}.log"


@dataclass(frozen=True)
class Prepared(Data):
    """A catalogue on disk, the store for its versions, and the cached base version if there is one."""

    store: Path = Path()
    kind: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # as stored in a version's metadata
    base_version: str | None = None  # the cached base version; None until a run has trained one


def model_params(overrides: dict[str, Any], kind: str | None = None) -> tuple[str, dict[str, Any]]:
    """`kind` (None: the default kind) and its parameters with `overrides`, as metadata.json stores them."""
    from bookrec.worker.learn.models import get_spec

    spec = get_spec(kind)
    return spec.kind, json.loads(json.dumps(spec.params(overrides)))


def prepare_data(size: Size, cache_root: Path, books_from: Path | None, notify: Notify) -> Data:
    """Synthesise the catalogue unless it is cached; say which happened (no TensorFlow)."""
    root = cache_root / size.key
    data_dir = root / "data"
    generated = not ((data_dir / "ratings.csv").is_file() and (data_dir / "books.csv").is_file())
    if generated:
        notify(f"synthesising the catalogue ({size.describe()}) into {data_dir} (cached for later runs)")
        synthesise(
            data_dir, users=size.users, books=size.books, ratings=size.ratings, seed=size.seed, books_from=books_from
        )
    else:
        notify(f"reusing the cached catalogue in {data_dir} ({size.describe()})")
    (root / "logs").mkdir(parents=True, exist_ok=True)
    return Data(size, root, data_dir, generated)


def prepare(
    size: Size,
    cache_root: Path,
    books_from: Path | None,
    notify: Notify,
    overrides: dict[str, Any] | None = None,
    kind: str | None = None,
) -> Prepared:
    """Synthesise the catalogue unless it is cached, and find a cached base version; say which happened.

    The base model is of `kind` (None: the default kind); `overrides` change its parameters.
    """
    data = prepare_data(size, cache_root, books_from, notify)
    kind, params = model_params(overrides or {}, kind)
    base = cached_base(ModelStore(data.root / "models"), kind, params)
    if base is not None:
        notify(f"reusing the cached base model {base} ({kind}) in {data.root / 'models'}")
    return Prepared(**vars(data), store=data.root / "models", kind=kind, params=params, base_version=base)


def cached_bases(store: ModelStore, but: str) -> list[str]:
    """The cached base version of each kind but `but` with its default parameters, where the store holds one."""
    from bookrec.worker.learn.models import KINDS

    found = (cached_base(store, *model_params({}, kind)) for kind in KINDS if kind != but)
    return [version for version in found if version is not None]


def cached_base(store: ModelStore, kind: str, params: dict[str, Any]) -> str | None:
    """The newest stored version of `kind` trained with `params` asked for (metadata's `params_asked`: `ease` fills in
    the l2 it chose in `params`) and exported with this code's serving graphs (`serving_graph`), or None."""
    versions = [entry["version"] for entry in store.list()] if store.root.is_dir() else []
    for version in sorted(versions, reverse=True):
        try:
            metadata = store.metadata(version)
        except BookrecError:
            continue
        asked = metadata.get("params_asked", metadata.get("params"))
        if metadata.get("kind") == kind and asked == params and metadata.get("serving_graph", 1) == SERVING_GRAPH:
            return version
    return None
