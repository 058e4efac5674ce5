"""Versioned model artifacts in a local directory, and the record of which version is in production.

Layout of the store root:

    <version>/                 what the writer put there (saved_model/, seen.npz, ...) plus metadata.json
    <version>/decision.json    {"decision": "promoted" | "rejected", "reason", "decided_at"}, once it is decided
    production.json            {"version": str | None, "history": [{"version", "promoted_at", "reason"}, ...]}
    .tmp-<version>-<random>/   a version being written, or one left by a crashed save; never listed
    .lock                      serialises changes to production.json and deletions across processes

A version becomes visible only through one `os.rename` of its complete temporary directory, so a
reader never sees half a version and a save killed midway leaves only a `.tmp-*` directory.
metadata.json holds the writer's metadata plus `version`, `created_at` and `files`
({relative path: sha256}); by convention the writer also records `kind`, `params`, `metrics`,
`baselines`, `history`, `data_fingerprint`, `snapshot` (the ratings store snapshot trained on, or null), `id_maps`,
`gate_metric` and `parent`.

Production's history is a stack, most recent last, whose top is the current version: a promotion
pushes an entry, a rollback pops the current one (so each rollback goes one step further back).
Retention always keeps the newest `keep_production` versions of that stack.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Iterator

from bookrec.shared.errors import (
    CatalogueMismatch,
    CorruptVersion,
    ModelStoreError,
    NoProductionModel,
    ValidationError,
    VersionNotFound,
)
from bookrec.shared.files import atomic_text

log = logging.getLogger(__name__)

VERSION_RE = re.compile(r"v\d{8}T\d{12}Z")
METADATA = "metadata.json"
DECISION = "decision.json"
PRODUCTION = "production.json"
PROMOTED, REJECTED = "promoted", "rejected"
MIN_SHARED_CATALOGUE = 0.5
"""A promotion is refused (without `force`) when the candidate and production share fewer than this
fraction of the items either of them holds (shared / union of the two item id sets)."""
LOWER_IS_BETTER = frozenset({"rmse", "mae"})
"""The metrics of a version's `metrics` and `baselines` that are errors (lower is better); every other is a score."""
CURVE_AXES = {"epoch": "epoch", "step": "gradient step", "l2": "l2 tried (log scale)"}
"""What the `x` of a version's `learning_curve` runs along, in words for an axis; l2 is drawn on a log scale."""
TEMP_PREFIX = ".tmp-"
_ID_FORMAT = "v%Y%m%dT%H%M%S%fZ"
_LOCK = ".lock"
_RENAME_ATTEMPTS = 100
_ONE_MICROSECOND = timedelta(microseconds=1)


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


def iso(moment: datetime) -> str:
    """`moment` as ISO-8601 UTC with microseconds, e.g. 2026-11-28T04:15:00.123456Z."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_version_id(version: object) -> str:
    """Return `version` if it is a well-formed version id; raise ValidationError otherwise (so no path can sneak in)."""
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        raise ValidationError(
            f"{version!r} is not a model version id (expected the form v20261128T041500123456Z; "
            "see `bookrec models list`)"
        )
    return version


def _id_time(version: str) -> datetime:
    return datetime.strptime(version, _ID_FORMAT).replace(tzinfo=timezone.utc)


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as JSON to `path` so that readers see the old file or the whole new one, never a part."""
    text = json.dumps(data, indent=2)
    with atomic_text(path, prefix=f"{TEMP_PREFIX}{path.stem}-") as handle:
        handle.write(text)


def _corrupt(version: str, problem: str) -> CorruptVersion:
    return CorruptVersion(
        f"model version {version}: {problem}; delete it with `bookrec models delete {version}` or restore the file"
    )


def _read_metadata(path: Path, version: str) -> dict:
    """Parse `<path>/metadata.json` (JSON only), raising CorruptVersion naming the file when it is unusable."""
    try:
        data = json.loads((path / METADATA).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _corrupt(version, f"{METADATA} is missing (incomplete version)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _corrupt(version, f"{METADATA} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _corrupt(version, f"{METADATA} does not hold a JSON object")
    return data


def data_summary(metadata: dict) -> dict | None:
    """What a version was trained on, from its data fingerprint: {"source", "rows", "users", "items"}, or None.
    `source` is the ratings file's path, or for a ratings store snapshot the store's (redacted) URL."""
    fingerprint = metadata.get("data_fingerprint")
    ratings = fingerprint.get("ratings") if isinstance(fingerprint, dict) else None
    if not isinstance(ratings, dict):
        return None
    source = ratings.get("path") or ratings.get("store")
    return {"source": source, **{k: ratings.get(k) for k in ("rows", "users", "items")}}


def _source(metadata: dict) -> str:
    """A version's ratings file for a message: 'trained on <path>' or 'data unknown'."""
    source = (data_summary(metadata) or {}).get("source")
    return f"trained on {source}" if source else "data unknown"


def _items(metadata: dict) -> set[str] | None:
    """The item ids a version was trained on, as strings, or None if its metadata does not record them."""
    id_maps = metadata.get("id_maps")
    items = id_maps.get("items") if isinstance(id_maps, dict) else None
    return {str(item) for item in items} if isinstance(items, list) else None


def _valid_record(record: object) -> bool:
    if not isinstance(record, dict) or "version" not in record or not isinstance(record.get("history"), list):
        return False
    current_ok = record["version"] is None or isinstance(record["version"], str)
    return current_ok and all(isinstance(e, dict) and isinstance(e.get("version"), str) for e in record["history"])


class VersionWriter:
    """Builds one version in a temporary directory and publishes it whole when the `with` block succeeds.

    Write files under `path`, call `finish(metadata)`, and leave the block: the store adds
    `version`, `created_at` and `files`, writes metadata.json and renames the directory into place.
    `version` holds the published id afterwards. If the block raises, or ends without `finish`,
    the temporary directory is removed and nothing becomes visible.
    """

    def __init__(self, store: ModelStore, version: str, kind_hint: str | None) -> None:
        self.version = version
        self.path = store.root / f"{TEMP_PREFIX}{version}-{secrets.token_hex(4)}"
        self._store = store
        self._kind_hint = kind_hint
        self._metadata: dict | None = None

    def __enter__(self) -> VersionWriter:
        self.path.mkdir(parents=True)
        return self

    def finish(self, metadata: dict) -> None:
        """Hand over the version's metadata (JSON-serialisable); it is written when the block ends without error."""
        if not isinstance(metadata, dict):
            raise ValidationError(f"version metadata must be a dict, not {type(metadata).__name__}")
        self._metadata = dict(metadata)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            self._publish()
        except BaseException:
            self._discard()
            raise

    def _publish(self) -> None:
        if self._metadata is None:
            raise ModelStoreError("the version writer ended without finish(metadata); nothing was saved")
        metadata = self._metadata
        if self._kind_hint is not None:
            metadata.setdefault("kind", self._kind_hint)
        metadata["files"] = self._checksums()
        for _ in range(_RENAME_ATTEMPTS):
            metadata.update(version=self.version, created_at=iso(_id_time(self.version)))
            try:
                _write_json_atomic(self.path / METADATA, metadata)
            except (TypeError, ValueError) as exc:
                raise ValidationError(
                    f"version metadata is not JSON-serialisable ({exc}); use dicts, lists, str and plain "
                    "numbers (convert numpy values with float() or int())"
                ) from None
            try:
                os.rename(self.path, self._store.root / self.version)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                # Another process published the same id in the same microsecond: take the next one.
                self.version = self._store._new_id(after=self.version)
                continue
            log.info("saved model version %s (%d files)", self.version, len(metadata["files"]))
            return
        raise ModelStoreError(f"could not find a free version id in {self._store.root} after {_RENAME_ATTEMPTS} tries")

    def _checksums(self) -> dict[str, str]:
        files = (p for p in sorted(self.path.rglob("*")) if p.is_file() and p != self.path / METADATA)
        return {p.relative_to(self.path).as_posix(): _sha256(p) for p in files}

    def _discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        log.info("discarded unfinished model version %s", self.version)


class ModelStore:
    """Model versions under `root`: save, read, verify, promote to production, retain and delete.

    Safe to share between processes: versions and production.json appear by atomic rename, and
    changes to the production record and deletions are serialised with a lock file.
    """

    def __init__(self, root: Path, clock: Callable[[], datetime] = utcnow) -> None:
        self.root = Path(root)
        self._clock = clock
        self._id_lock = threading.Lock()
        self._last_id: str | None = None

    def new_version(self, kind_hint: str | None = None) -> VersionWriter:
        """A writer for a new version (use it as a context manager); `kind_hint` is the default `kind`."""
        self.root.mkdir(parents=True, exist_ok=True)
        return VersionWriter(self, self._new_id(), kind_hint)

    def metadata(self, version: str) -> dict:
        """The parsed metadata.json of `version` (VersionNotFound, CorruptVersion, ValidationError)."""
        return _read_metadata(self._existing(version), version)

    def verify(self, version: str) -> Path:
        """Check that every file listed in the metadata is present and unchanged; return the version's directory."""
        path = self._existing(version)
        files = _read_metadata(path, version).get("files")
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise _corrupt(version, f"{METADATA} has no valid `files` checksums")
        root = path.resolve()
        for relative, expected in files.items():
            file = path / relative
            if not file.resolve().is_relative_to(root):
                raise _corrupt(version, f"{METADATA} lists {relative!r}, which is outside the version directory")
            if not file.is_file():
                raise _corrupt(version, f"{relative} is missing")
            if _sha256(file) != expected:
                raise _corrupt(version, f"{relative} is truncated or changed (sha256 mismatch)")
        return path

    def production(self) -> str | None:
        """The version recorded as in production, or None if none has been promoted."""
        return self._read_record()["version"]

    def holds(self, version: object) -> bool:
        """Whether `version` is a well-formed version id with a directory in the store (not whether it is intact)."""
        return isinstance(version, str) and self._has(version)

    def require_production(self) -> str:
        """The production version; NoProductionModel if none has been promoted yet."""
        version = self.production()
        if version is None:
            raise NoProductionModel(
                f"no model version is in production in {self.root}; train one or promote one "
                "with `bookrec models promote VERSION`"
            )
        return version

    def set_production(
        self,
        version: str,
        announce: Callable[[str, str | None], None] | None = None,
        reason: str = "manual",
        force: bool = False,
    ) -> str | None:
        """Verify `version`, check that it was trained on production's catalogue (unless `force`), record it as
        in production and as promoted for `reason`; return the version it replaces.

        `announce(version, replaced)`, if given, runs after the record is written and before the lock is
        released, so concurrent promotions announce (e.g. set the Redis pointer) in the order they
        were recorded and the last announcement always names the recorded version.
        CatalogueMismatch when the catalogues differ (see `MIN_SHARED_CATALOGUE`).
        """
        with self._locked():
            self.verify(version)
            try:
                record = self._read_record()
            except ModelStoreError as exc:
                log.warning("rewriting the production record: %s", exc)
                record = {"version": None, "history": []}
            if not force:
                self._check_catalogue(version, record["version"])
            history = record["history"]
            if version != record["version"]:  # promoting the current version again adds no rollback step
                history = [*history, {"version": version, "promoted_at": iso(self._clock()), "reason": reason}]
            _write_json_atomic(self.root / PRODUCTION, {"version": version, "history": history})
            self._write_decision(version, PROMOTED, reason)
            if announce is not None:
                announce(version, record["version"])
        log.info("model version %s is in production (was %s)", version, record["version"])
        return record["version"]

    def roll_back(self, announce: Callable[[str, str | None], None] | None = None) -> tuple[str, str]:
        """Put the production version before the current one back, popping the current one off the history,
        so the next rollback goes one step further back; return (restored, replaced).

        Versions of the history that no longer exist are skipped; `announce` runs as in `set_production`.
        ModelStoreError when no earlier production version is left.
        """
        with self._locked():
            record = self._read_record()
            current, history = record["version"], record["history"]
            below = self._entry_below(current, history)
            if below is None:
                raise ModelStoreError(
                    f"nothing to roll back to: no version that was in production before {current or 'now'} is still "
                    "in the store (see `bookrec models list` and promote one with `bookrec models promote VERSION`)"
                )
            restored = history[below]["version"]
            self.verify(restored)
            _write_json_atomic(self.root / PRODUCTION, {"version": restored, "history": history[: below + 1]})
            if announce is not None:
                announce(restored, current)
        log.info("rolled back from model version %s to %s", current, restored)
        return restored, current

    def rollback_target(self) -> str | None:
        """The version a rollback would put back now (the newest earlier production version still in the store), or
        None when there is nothing to roll back to."""
        record = self._read_record()
        below = self._entry_below(record["version"], record["history"])
        return None if below is None else record["history"][below]["version"]

    def decision(self, version: str) -> dict | None:
        """`version`'s recorded decision {"decision": "promoted" | "rejected", "reason", "decided_at"}, or None."""
        try:
            data = json.loads((self._existing(version) / DECISION).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("ignoring the unreadable decision record of %s: %s", version, exc)
            return None
        return data if isinstance(data, dict) and data.get("decision") in (PROMOTED, REJECTED) else None

    def record_decision(self, version: str, decision: str, reason: str) -> None:
        """Record that `version` was promoted or rejected (`decision`) and why; retention drops rejected ones first."""
        if decision not in (PROMOTED, REJECTED):
            raise ValidationError(f"decision must be {PROMOTED!r} or {REJECTED!r}, got {decision!r}")
        with self._locked():
            self._existing(version)
            self._write_decision(version, decision, reason)

    def delete(self, version: str) -> None:
        """Delete `version`; refuses the production version."""
        with self._locked():
            self._existing(version)
            if version == self.production():
                raise ModelStoreError(
                    f"{version} is the production model; promote another version or roll back "
                    "(`bookrec models rollback`) before deleting it"
                )
            self._remove(version)

    def retain(self, keep_versions: int, keep_production: int) -> list[str]:
        """Keep the newest `keep_production` versions of production's history (the current one always) and at
        most `keep_versions` others, deleting rejected candidates first, then the oldest; return the deleted ids,
        oldest first."""
        if keep_versions < 0 or keep_production < 1:
            raise ValidationError(
                f"keep_versions={keep_versions} must be 0 or more and keep_production={keep_production} 1 or more"
            )
        with self._locked():
            protected = self._recent_production(keep_production)
            others = [v for v in self._ids() if v not in protected]
            rejected = [v for v in others if (self.decision(v) or {}).get("decision") == REJECTED]
            by_priority = rejected + [v for v in others if v not in rejected]
            doomed = sorted(by_priority[: max(0, len(others) - keep_versions)])
            for version in doomed:
                self._remove(version)
        return doomed

    def clean_temp(self, older_than_s: float = 3600) -> list[str]:
        """Remove temporary entries (left by crashed saves) older than `older_than_s` seconds; return their names."""
        if not self.root.is_dir():
            return []
        cutoff = time.time() - older_than_s
        removed = []
        for entry in self.root.iterdir():
            if not entry.name.startswith(TEMP_PREFIX) or entry.lstat().st_mtime > cutoff:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
            log.info("removed stale temporary entry %s", entry)
        return removed

    def _recent_production(self, count: int) -> list[str]:
        """The newest `count` distinct versions of production's history that still exist, current first."""
        record = self._read_record()
        recent: list[str] = []
        for version in [record["version"], *(e["version"] for e in reversed(record["history"]))]:
            if len(recent) < count and version and version not in recent and self._has(version):
                recent.append(version)
        return recent

    def _entry_below(self, current: str | None, history: list[dict]) -> int | None:
        """The index of the newest history entry for a version other than `current` that still exists, or None."""
        if current is None:
            return None
        for index in range(len(history) - 1, -1, -1):
            if history[index]["version"] != current and self._has(history[index]["version"]):
                return index
        return None

    def _check_catalogue(self, version: str, production: str | None) -> None:
        """CatalogueMismatch if `version` and `production` share too few items (versions without id maps pass)."""
        if production is None or production == version:
            return
        candidate = self.metadata(version)
        try:
            current = self.metadata(production)
        except ModelStoreError as exc:
            log.warning("not comparing %s's catalogue with production %s's: %s", version, production, exc)
            return
        ours, theirs = _items(candidate), _items(current)
        if ours is None or theirs is None:
            log.info("not comparing catalogues: %s or %s records no item ids", version, production)
            return
        shared, union = len(ours & theirs), len(ours | theirs)
        if shared < MIN_SHARED_CATALOGUE * union:
            raise CatalogueMismatch(
                f"refusing to promote {version} ({_source(candidate)}, {len(ours):,} items) over production "
                f"{production} ({_source(current)}, {len(theirs):,} items): they share {shared:,} of the {union:,} "
                f"items in either catalogue ({shared / union:.0%}, under {MIN_SHARED_CATALOGUE:.0%}), so {version} "
                f"was trained on another catalogue; promote it anyway with `bookrec models promote {version} --force`"
            )

    def _write_decision(self, version: str, decision: str, reason: str) -> None:
        record = {"decision": decision, "reason": reason, "decided_at": iso(self._clock())}
        _write_json_atomic(self.root / version / DECISION, record)

    def _has(self, version: str) -> bool:
        return bool(VERSION_RE.fullmatch(version)) and (self.root / version).is_dir()

    def _ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if VERSION_RE.fullmatch(p.name) and p.is_dir())

    def _existing(self, version: str) -> Path:
        path = self.root / check_version_id(version)
        if not path.is_dir():
            available = ", ".join(self._ids()[-3:]) or "none yet"
            raise VersionNotFound(
                f"model version {version} not found in {self.root} (newest: {available}; see `bookrec models list`)"
            )
        return path

    def _new_id(self, after: str | None = None) -> str:
        """A fresh id from the clock, bumped by a microsecond past the last one issued (and `after`) if needed."""
        with self._id_lock:
            moment = self._clock()
            floor = max((v for v in (self._last_id, after) if v), default=None)
            if floor is not None:
                moment = max(moment, _id_time(floor) + _ONE_MICROSECOND)
            self._last_id = moment.astimezone(timezone.utc).strftime(_ID_FORMAT)
            return self._last_id

    def _read_record(self) -> dict:
        path = self.root / PRODUCTION
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": None, "history": []}
        except (ValueError, UnicodeDecodeError):
            record = None
        if not _valid_record(record):
            raise ModelStoreError(
                f"the production record {path} is damaged; promote a version again with "
                "`bookrec models promote VERSION` to rewrite it"
            )
        return record

    def _remove(self, version: str) -> None:
        # Rename first so the version disappears at once, never half-deleted.
        doomed = self.root / f"{TEMP_PREFIX}{version}-{secrets.token_hex(4)}"
        os.rename(self.root / version, doomed)
        shutil.rmtree(doomed)
        log.info("deleted model version %s", version)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / _LOCK, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def list(self) -> list[dict]:
        """Summaries of every version, oldest first: version, kind, created_at, metrics, data (see `data_summary`),
        gate_metric, decision ("promoted", "rejected" or None), decision_reason, production, status.

        A version whose metadata.json is missing or unparsable is listed with status "corrupt" and a reason.
        """
        production = self.production()
        return [self._summary(version, production) for version in self._ids()]

    def _summary(self, version: str, production: str | None) -> dict:
        try:
            metadata = _read_metadata(self.root / version, version)
        except CorruptVersion as exc:
            return {"version": version, "production": version == production, "status": "corrupt", "reason": str(exc)}
        summary = {"version": version, "kind": metadata.get("kind"), "created_at": metadata.get("created_at")}
        if "metrics" in metadata:
            summary["metrics"] = metadata["metrics"]
        decision = self.decision(version) or {}
        return {
            **summary,
            "data": data_summary(metadata),
            "gate_metric": metadata.get("gate_metric"),
            "decision": decision.get("decision"),
            "decision_reason": decision.get("reason"),
            "production": version == production,
            "status": "ok",
        }
