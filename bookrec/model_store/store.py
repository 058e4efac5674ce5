"""Versioned model artifacts in a local directory, and the record of which version is in production.

Layout of the store root:

    <version>/                 what the writer put there (saved_model/, seen.npz, ...) plus metadata.json
    production.json            {"version": str | None, "history": [{"version", "promoted_at"}, ...]}, most recent last
    .tmp-<version>-<random>/   a version being written, or one left by a crashed save; never listed
    .lock                      serialises changes to production.json and deletions across processes

A version becomes visible only through one `os.rename` of its complete temporary directory, so a
reader never sees half a version and a save killed midway leaves only a `.tmp-*` directory.
metadata.json holds the writer's metadata plus `version`, `created_at` and `files`
({relative path: sha256}); by convention the writer also records `kind`, `params`, `metrics`,
`baselines`, `history`, `data_fingerprint` and `parent`.
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

from bookrec.shared.errors import CorruptVersion, ModelStoreError, NoProductionModel, ValidationError, VersionNotFound
from bookrec.shared.files import atomic_text

log = logging.getLogger(__name__)

VERSION_RE = re.compile(r"v\d{8}T\d{12}Z")
METADATA = "metadata.json"
PRODUCTION = "production.json"
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

    def require_production(self) -> str:
        """The production version; NoProductionModel if none has been promoted yet."""
        version = self.production()
        if version is None:
            raise NoProductionModel(
                f"no model version is in production in {self.root}; train one or promote one "
                "with `bookrec models promote VERSION`"
            )
        return version

    def set_production(self, version: str, announce: Callable[[str | None], None] | None = None) -> str | None:
        """Verify `version` and record it as in production; return the version it replaces.

        `announce(replaced)`, if given, runs after the record is written and before the lock is
        released, so concurrent promotions announce (e.g. set the Redis pointer) in the order they
        were recorded and the last announcement always names the recorded version.
        """
        with self._locked():
            self.verify(version)
            try:
                record = self._read_record()
            except ModelStoreError as exc:
                log.warning("rewriting the production record: %s", exc)
                record = {"version": None, "history": []}
            entry = {"version": version, "promoted_at": iso(self._clock())}
            _write_json_atomic(self.root / PRODUCTION, {"version": version, "history": [*record["history"], entry]})
            if announce is not None:
                announce(record["version"])
        log.info("model version %s is in production (was %s)", version, record["version"])
        return record["version"]

    def previous_production(self) -> str | None:
        """The most recently promoted version other than the current one that still exists, or None."""
        record = self._read_record()
        for entry in reversed(record["history"]):
            version = entry["version"]
            if version != record["version"] and VERSION_RE.fullmatch(version) and (self.root / version).is_dir():
                return version
        return None

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

    def retain(self, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions and the production one; return the deleted ids, oldest first."""
        if keep < 0:
            raise ValidationError(f"keep={keep} must be 0 or more")
        with self._locked():
            production = self.production()
            ids = self._ids()
            doomed = [v for v in ids[: max(0, len(ids) - keep)] if v != production]
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
        """Summaries of every version, oldest first: version, kind, created_at, metrics, production, status.

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
        return {**summary, "production": version == production, "status": "ok"}
