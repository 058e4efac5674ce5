"""ModelStore: versions appear whole or not at all, damage is named, ids sort, paths stay inside the store."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from bookrec.model_store.store import ModelStore
from bookrec.shared.errors import CorruptVersion, ModelStoreError, NoProductionModel, ValidationError, VersionNotFound

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = "saved_model/variables/variables.data-00000-of-00001"
FROZEN = datetime(2026, 11, 28, 4, 15, tzinfo=timezone.utc)


def save(store: ModelStore, **metadata: object) -> str:
    """Save a small SavedModel-shaped version and return its id."""
    with store.new_version(kind_hint="mf") as writer:
        (writer.path / "saved_model/variables").mkdir(parents=True)
        (writer.path / "saved_model/saved_model.pb").write_bytes(b"graph")
        (writer.path / WEIGHTS).write_bytes(b"w" * 4096)
        writer.finish(dict(metadata))
    return writer.version


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def visible_entries(store: ModelStore) -> list[str]:
    return sorted(p.name for p in store.root.iterdir() if not p.name.startswith("."))


def test_model_store_never_loads_tensorflow() -> None:
    check = "import sys, bookrec.model_store.store, bookrec.model_store.promotion; print('tensorflow' in sys.modules)"

    result = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "False"


def test_saved_version_records_metadata_and_checksums(store: ModelStore) -> None:
    version = save(store, params={"dim": 10}, metrics={"rmse": 0.9})

    metadata = store.metadata(version)
    assert metadata["version"] == version
    assert metadata["kind"] == "mf"
    assert metadata["params"] == {"dim": 10}
    assert datetime.fromisoformat(metadata["created_at"]).tzinfo is not None
    assert metadata["files"] == {
        "saved_model/saved_model.pb": hashlib.sha256(b"graph").hexdigest(),
        WEIGHTS: hashlib.sha256(b"w" * 4096).hexdigest(),
    }
    assert store.verify(version) == store.root / version


def test_exception_inside_save_leaves_no_version(store: ModelStore) -> None:
    with pytest.raises(RuntimeError, match="training blew up"):
        with store.new_version() as writer:
            (writer.path / "half.bin").write_bytes(b"x")
            raise RuntimeError("training blew up")

    assert store.list() == []
    assert list(store.root.iterdir()) == []


def test_save_without_finish_publishes_nothing(store: ModelStore) -> None:
    with pytest.raises(ModelStoreError, match="finish"):
        with store.new_version() as writer:
            (writer.path / "weights.bin").write_bytes(b"x")

    assert store.list() == []


def test_unserialisable_metadata_is_a_validation_error_and_saves_nothing(store: ModelStore) -> None:
    with pytest.raises(ValidationError, match="JSON"):
        with store.new_version() as writer:
            writer.finish({"metrics": {"rmse": object()}})

    assert store.list() == []


def test_crash_leftovers_are_never_listed_and_clean_temp_removes_only_stale_ones(store: ModelStore) -> None:
    version = save(store)
    stale = store.root / ".tmp-v20261128T041500123456Z-dead"
    (stale / "saved_model").mkdir(parents=True)
    (stale / "saved_model/saved_model.pb").write_bytes(b"half")
    os.utime(stale, (0, 0))
    in_progress = store.root / ".tmp-v20261128T041500123457Z-live"
    in_progress.mkdir()

    assert [v["version"] for v in store.list()] == [version]
    assert store.clean_temp(older_than_s=3600) == [stale.name]
    assert not stale.exists()
    assert in_progress.exists()


def test_save_killed_midway_leaves_no_visible_version(store: ModelStore) -> None:
    child = (
        "import sys\n"
        "from pathlib import Path\n"
        "from bookrec.model_store.store import ModelStore\n"
        "with ModelStore(Path(sys.argv[1])).new_version() as w:\n"
        "    (w.path / 'weights.bin').write_bytes(b'x' * 100000)\n"
        "    print('writing', flush=True)\n"
        "    sys.stdin.read()\n"
        "    w.finish({})\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", child, str(store.root)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as proc:
        assert proc.stdout.readline() == b"writing\n"
        proc.kill()
        proc.wait(timeout=30)

    assert store.list() == []
    assert visible_entries(store) == []
    assert len(store.clean_temp(older_than_s=0)) == 1
    assert list(store.root.iterdir()) == []


def test_truncated_file_fails_verify_naming_the_file(store: ModelStore) -> None:
    version = save(store)
    with open(store.root / version / WEIGHTS, "r+b") as fh:
        fh.truncate(100)

    with pytest.raises(CorruptVersion) as err:
        store.verify(version)
    assert f"{WEIGHTS} is truncated or changed (sha256 mismatch)" in str(err.value)


def test_missing_file_fails_verify_naming_the_file(store: ModelStore) -> None:
    version = save(store)
    (store.root / version / "saved_model/saved_model.pb").unlink()

    with pytest.raises(CorruptVersion, match="saved_model/saved_model.pb is missing"):
        store.verify(version)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", ""])
def test_broken_metadata_is_named_and_listing_survives(store: ModelStore, content: str) -> None:
    broken, healthy = save(store), save(store)
    (store.root / broken / "metadata.json").write_text(content)

    with pytest.raises(CorruptVersion, match="metadata.json"):
        store.metadata(broken)
    with pytest.raises(CorruptVersion, match="metadata.json"):
        store.verify(broken)
    listing = store.list()
    assert [(v["version"], v["status"]) for v in listing] == [(broken, "corrupt"), (healthy, "ok")]
    assert "metadata.json" in listing[0]["reason"]


def test_version_without_metadata_is_listed_as_corrupt(store: ModelStore) -> None:
    (store.root / "v20261128T041500123456Z").mkdir(parents=True)

    [entry] = store.list()
    assert entry["status"] == "corrupt"
    assert "metadata.json is missing" in entry["reason"]


def test_versions_created_quickly_sort_by_creation(store: ModelStore) -> None:
    created = [save(store, n=i) for i in range(5)]

    assert len(set(created)) == 5
    assert [v["version"] for v in store.list()] == created == sorted(created)
    assert [store.metadata(v)["n"] for v in created] == list(range(5))


def test_versions_created_in_the_same_microsecond_still_differ_and_sort(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, clock=lambda: FROZEN)

    created = [save(store) for _ in range(3)]

    assert created == ["v20261128T041500000000Z", "v20261128T041500000001Z", "v20261128T041500000002Z"]
    assert [v["version"] for v in store.list()] == created


def test_two_processes_saving_in_the_same_microsecond_both_publish(tmp_path: Path) -> None:
    first, second = ModelStore(tmp_path, clock=lambda: FROZEN), ModelStore(tmp_path, clock=lambda: FROZEN)

    with first.new_version() as a, second.new_version() as b:
        assert a.version == b.version
        a.finish({"who": "a"})
        b.finish({"who": "b"})

    assert a.version != b.version
    assert {first.metadata(v)["who"] for v in (a.version, b.version)} == {"a", "b"}
    assert first.metadata(b.version)["version"] == b.version


@pytest.mark.parametrize("bad", ["../etc", "/etc", "..", "", "v20261128T041500123456Z/../../x", "V1", "v1\n"])
def test_version_ids_that_are_not_ids_are_refused(store: ModelStore, bad: str) -> None:
    save(store)
    for operation in (store.metadata, store.verify, store.delete, store.set_production):
        with pytest.raises(ValidationError, match="not a model version id"):
            operation(bad)


def test_metadata_naming_files_outside_the_version_fails_verify(store: ModelStore, tmp_path: Path) -> None:
    version = save(store)
    (tmp_path / "secret").write_text("x")
    path = store.root / version / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["files"]["../../secret"] = hashlib.sha256(b"x").hexdigest()
    path.write_text(json.dumps(metadata))

    with pytest.raises(CorruptVersion, match="outside the version directory"):
        store.verify(version)


def test_unknown_version_is_not_found_and_names_some_available(store: ModelStore) -> None:
    version = save(store)

    with pytest.raises(VersionNotFound, match=version):
        store.metadata("v20990101T000000000000Z")


def test_production_record_and_history(store: ModelStore) -> None:
    with pytest.raises(NoProductionModel, match="bookrec models promote"):
        store.require_production()
    first, second = save(store), save(store)

    assert store.set_production(first) is None
    assert store.set_production(second) == first

    assert store.require_production() == second
    assert store.previous_production() == first
    record = json.loads((store.root / "production.json").read_text())
    assert record["version"] == second
    assert [h["version"] for h in record["history"]] == [first, second]
    assert [v["version"] for v in store.list() if v["production"]] == [second]


def test_previous_production_skips_versions_that_no_longer_exist(store: ModelStore) -> None:
    oldest, middle, newest = save(store), save(store), save(store)
    for version in (oldest, middle, newest):
        store.set_production(version)
    store.delete(middle)

    assert store.previous_production() == oldest


def test_corrupt_version_is_never_put_in_production(store: ModelStore) -> None:
    good, bad = save(store), save(store)
    store.set_production(good)
    (store.root / bad / WEIGHTS).write_bytes(b"tampered")

    with pytest.raises(CorruptVersion, match=WEIGHTS):
        store.set_production(bad)
    assert store.production() == good


def test_damaged_production_record_is_reported_and_rewritten_by_promotion(store: ModelStore) -> None:
    version = save(store)
    (store.root / "production.json").write_text("{oops")

    with pytest.raises(ModelStoreError, match="promote a version again"):
        store.production()
    store.set_production(version)
    assert store.production() == version


def test_delete_removes_a_version_but_refuses_production(store: ModelStore) -> None:
    production, other = save(store), save(store)
    store.set_production(production)

    with pytest.raises(ModelStoreError, match="is the production model"):
        store.delete(production)
    store.delete(other)

    assert visible_entries(store) == ["production.json", production]
    with pytest.raises(VersionNotFound):
        store.delete(other)


def test_retain_keeps_the_newest_and_production(store: ModelStore) -> None:
    versions = [save(store) for _ in range(5)]
    store.set_production(versions[0])

    deleted = store.retain(2)

    assert deleted == versions[1:3]
    assert [v["version"] for v in store.list()] == [versions[0], *versions[3:]]
