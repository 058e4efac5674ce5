"""Job payloads: the arguments of each job, validated the same way by the producer and the worker.

Jobs travel as JSON, so ids arrive as JSON numbers or strings; both become the canonical
string form used as the cache key (`42` and `"42"` are the same user).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from bookrec.shared.errors import ValidationError

MODEL_KINDS = ("mult-dae", "ease", "softmax-mf", "biased-mf", "mf", "deep")
"""The model kinds a train or retrain may name, default first (the worker defines them in worker/models/)."""
DEFAULT_MODEL_KIND = MODEL_KINDS[0]


@dataclass(frozen=True)
class Param:
    """The rule for one hyper-parameter: a whole number (`int`) or any number (`float`) from `low` to `high`."""

    type: type
    low: float
    high: float

    def check(self, kind: str, name: str, value: Any) -> int | float:
        """`value` if it follows the rule; ValidationError naming the kind, the parameter and the range otherwise."""
        whole = self.type is int
        numeric = (int,) if whole else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric) or not self.low <= value <= self.high:
            what = "a whole number" if whole else "a number"
            raise ValidationError(
                f"{kind} hyper-parameter {name} must be {what} from {self.low:g} to {self.high:g}, got {shown(value)}"
            )
        return value


@dataclass(frozen=True)
class Choice:
    """The rule for a hyper-parameter that names one of a few ways (`values`)."""

    values: tuple[str, ...]

    def check(self, kind: str, name: str, value: Any) -> str:
        """`value` if it is one of `values`; ValidationError naming the kind, the parameter and the choices otherwise."""
        if not isinstance(value, str) or value not in self.values:
            raise ValidationError(
                f"{kind} hyper-parameter {name} must be one of {', '.join(map(repr, self.values))}, got {shown(value)}"
            )
        return value


_DIM = Param(int, 1, 4096)
_EPOCHS = Param(int, 1, 200)
_BATCH = Param(int, 1, 65536)
_RATE = Param(float, 1e-6, 1.0)
_L2 = Param(float, 0.0, 1.0)
_PATIENCE = Param(int, 0, 50)
_FACTOR_PARAMS = {"dim": _DIM, "epochs": _EPOCHS, "batch_size": _BATCH, "learning_rate": _RATE, "patience": _PATIENCE}

PARAMS: dict[str, dict[str, Param | Choice]] = {
    "mult-dae": {
        "dim": _DIM,
        "dropout": Param(float, 0.0, 0.95),
        "l2": _L2,
        "learning_rate": _RATE,
        "batch_size": _BATCH,
        "steps": Param(int, 1, 20000),
        "epochs": _EPOCHS,
        "max_epochs": Param(int, 1, 1000),
    },
    "ease": {
        "l2": Param(float, 1e-3, 1e8),
        "weighting": Choice(("rating", "binary")),
        "keep": Param(int, 1, 100000),
        "dense_max": Param(int, 1, 1000000),
    },
    "softmax-mf": {**_FACTOR_PARAMS, "l2": _L2},
    "biased-mf": {**_FACTOR_PARAMS, "l2": _L2, "l2_bias": _L2},
    "mf": _FACTOR_PARAMS,
    "deep": _FACTOR_PARAMS,
}
"""Each kind's hyper-parameters and their ranges (README: Models); worker/learn/models hold the defaults.

The ranges bound what a request can ask for without seeing the data; the trainer also refuses a
model whose estimated size on the catalogue exceeds BOOKREC_TRAIN_MEMORY_MB."""

DEFAULT_BOOKS = "books.csv"
"""The books file a retrain uses when none is named, if it exists (a named one must exist)."""
RATINGS_FILE = "ratings.csv"
"""The ratings file of BOOKREC_DATA_DIR that `bookrec init` imports into an empty ratings store, and that the demo
and the benchmark name in their retrains (a retrain naming no file trains on the ratings store)."""
MAX_USERS_PER_JOB = 1000
MAX_N = 100
MAX_USER_ID_LENGTH = 200
MAX_SHOWN = 60
"""Characters of a bad value a message quotes: a message never grows with the value it refuses."""


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """`repr(value)` for a message, cut to `limit` characters (with its full length) when longer."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"


def user_id(value: Any) -> str:
    """The canonical string form of one user id; ValidationError naming the value if it is not an id."""
    if isinstance(value, bool) or value is None:
        raise ValidationError(f"user id {shown(value)} is not an integer or a string")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        raise ValidationError(f"user id {shown(value)} is not an integer or a string")
    if isinstance(value, str):
        text = value.strip()
        if not text or len(text) > MAX_USER_ID_LENGTH or any(c in text for c in "\r\n\t *?[]"):
            raise ValidationError(f"user id {shown(value)} is empty, too long or holds whitespace or glob characters")
        return text
    raise ValidationError(f"user id {shown(value)} is a {type(value).__name__}, not an integer or a string")


def count_n(value: Any) -> int:
    """A list length n in 1..MAX_N; ValidationError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_N:
        raise ValidationError(f"n must be a whole number from 1 to {MAX_N}, got {shown(value)}")
    return value


def user_list(values: Any, limit: int | None = MAX_USERS_PER_JOB) -> list[str]:
    """Canonical ids of a non-empty list of user ids (at most `limit`); ValidationError for the first bad one."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise ValidationError(f"user ids must be a list, got {type(values).__name__}")
    if not values:
        raise ValidationError("the list of user ids is empty")
    if limit is not None and len(values) > limit:
        raise ValidationError(
            f"{len(values)} user ids in one job; at most {limit} are allowed (the client splits longer lists)"
        )
    return [user_id(v) for v in values]


def split_valid(values: list[Any]) -> tuple[list[str], list[dict[str, str]]]:
    """(canonical good ids, [{"user_id", "error"}] for bad ones): a bad id never poisons the rest of a batch."""
    good, bad = [], []
    for value in values:
        try:
            good.append(user_id(value))
        except ValidationError as exc:
            bad.append({"user_id": shown(value), "error": str(exc)})
    return good, bad


def index_bound(value: Any, name: str) -> int | None:
    """A start/stop position in the list of users (a whole number) or None; ValidationError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be a whole number or null, got {shown(value)}")
    return value


def model_kind(value: Any) -> str:
    """A model kind from MODEL_KINDS (None means the default); ValidationError naming the known kinds otherwise."""
    if value is None:
        return DEFAULT_MODEL_KIND
    if value not in MODEL_KINDS:
        raise ValidationError(f"unknown model kind {shown(value)}; choose one of: {', '.join(MODEL_KINDS)}")
    return value


def hyper_params(value: Any, kind: Any = None) -> dict[str, Any]:
    """Hyper-parameters of `kind` (None: the default kind): a JSON object of known keys, each in its range.

    None (as the object or as a value) means the kind's default. ValidationError names the first
    unknown key, with the known ones, or the value out of range, with the range.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError(f"params must be an object of hyper-parameters, got {type(value).__name__}")
    kind = model_kind(kind)
    rules = PARAMS[kind]
    unknown = sorted(str(key) for key in value if key not in rules)
    if unknown:
        raise ValidationError(
            f"unknown {kind} hyper-parameter(s) {', '.join(k if len(k) <= MAX_SHOWN else shown(k) for k in unknown[:5])}"
            f"{f' and {len(unknown) - 5} more' if len(unknown) > 5 else ''}; {kind} takes: {', '.join(rules)}"
        )
    return {key: None if v is None else rules[key].check(kind, key, v) for key, v in value.items()}


def data_file(value: Any, what: str) -> str:
    """A file name relative to BOOKREC_DATA_DIR: not absolute, no `..`; ValidationError naming it otherwise.

    The worker also resolves it, symlinks included, and refuses anything that lands outside the folder.
    """
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ValidationError(f"{what} must be a file name inside BOOKREC_DATA_DIR, got {shown(value)}")
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts:
        raise ValidationError(
            f"{what} path {shown(value)} points outside BOOKREC_DATA_DIR; give the name of a file inside it"
        )
    return value


def flag(value: Any, name: str) -> bool:
    """A JSON true/false; ValidationError naming `name` otherwise."""
    if not isinstance(value, bool):
        raise ValidationError(f"{name} must be true or false, got {shown(value)}")
    return value


def seed(value: Any) -> int:
    """A random seed, a whole number from 0 to 2**32 - 1; ValidationError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise ValidationError(f"seed must be a whole number from 0 to {2**32 - 1}, got {shown(value)}")
    return value


def data_path(data_dir: Path, name: Any, what: str) -> Path:
    """`name` resolved inside `data_dir`; ValidationError if it is not a file name or resolves outside it (symlinks too)."""
    data_file(name, what)
    root = data_dir.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise ValidationError(
            f"{what} path {shown(name)} resolves outside BOOKREC_DATA_DIR ({root}); only files inside it can be used"
        )
    return path
