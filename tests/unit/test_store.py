"""ModelStore: versions appear whole or not at all, damage is named, ids sort, paths stay inside the store."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from bookrec.model_store.store import ModelStore
from bookrec.shared.errors import (
    CatalogueMismatch,
    CorruptVersion,
    ModelStoreError,
    NoProductionModel,
    ValidationError,
    VersionNotFound,
)
from tests.conftest import MOVIELENS

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


def items(*ids: int) -> dict:
    """Metadata recording a catalogue of these item ids, as the pipeline does."""
    return {"id_maps": {"users": ["1", "2"], "items": [str(i) for i in ids]}}


def history(store: ModelStore) -> list[str]:
    return [entry["version"] for entry in json.loads((store.root / "production.json").read_text())["history"]]


def test_production_record_and_history(store: ModelStore) -> None:
    with pytest.raises(NoProductionModel, match="bookrec models promote"):
        store.require_production()
    first, second = save(store), save(store)

    assert store.set_production(first) is None
    assert store.set_production(second, reason="gate passed") == first

    assert store.require_production() == second
    record = json.loads((store.root / "production.json").read_text())
    assert record["version"] == second
    assert [(h["version"], h["reason"]) for h in record["history"]] == [(first, "manual"), (second, "gate passed")]
    assert [v["version"] for v in store.list() if v["production"]] == [second]
    assert store.decision(second)["decision"] == "promoted" and store.decision(second)["reason"] == "gate passed"


def test_each_rollback_goes_one_step_further_back_and_a_promotion_starts_again_from_it(store: ModelStore) -> None:
    v1, v2, v3, v4 = (save(store) for _ in range(4))
    for version in (v1, v2, v3):
        store.set_production(version)

    assert store.roll_back() == (v2, v3)
    assert store.roll_back() == (v1, v2)
    with pytest.raises(
        ModelStoreError, match=f"nothing to roll back to: no version that was in production before {v1}"
    ):
        store.roll_back()
    assert store.production() == v1

    store.set_production(v4)
    assert store.roll_back() == (v1, v4)
    assert history(store) == [v1]


def test_rollback_skips_versions_that_no_longer_exist(store: ModelStore) -> None:
    oldest, middle, newest = save(store), save(store), save(store)
    for version in (oldest, middle, newest):
        store.set_production(version)
    store.delete(middle)

    assert store.roll_back() == (oldest, newest)


def test_promoting_the_current_version_again_adds_no_rollback_step(store: ModelStore) -> None:
    first, second = save(store), save(store)
    store.set_production(first)
    store.set_production(second)

    store.set_production(second)

    assert history(store) == [first, second]
    assert store.roll_back() == (first, second)


def test_rollback_to_a_damaged_version_is_refused_and_changes_nothing(store: ModelStore) -> None:
    first, second = save(store), save(store)
    store.set_production(first)
    store.set_production(second)
    (store.root / first / WEIGHTS).write_bytes(b"tampered")

    with pytest.raises(CorruptVersion, match=WEIGHTS):
        store.roll_back()
    assert (store.production(), history(store)) == (second, [first, second])


def test_a_version_trained_on_another_catalogue_is_refused_naming_both(store: ModelStore) -> None:
    books = save(store, **items(*range(1, 101)), data_fingerprint={"ratings": {"path": "/data/books/ratings.csv"}})
    movies = save(store, **items(*range(61, 161)), data_fingerprint={"ratings": {"path": "/data/ml/ratings.csv"}})
    store.set_production(books)

    with pytest.raises(CatalogueMismatch) as err:
        store.set_production(movies)

    message = str(err.value)
    assert f"refusing to promote {movies} (trained on /data/ml/ratings.csv, 100 items)" in message
    assert f"over production {books} (trained on /data/books/ratings.csv, 100 items)" in message
    assert "they share 40 of the 160 items in either catalogue (25%, under 50%)" in message
    assert "--force" in message
    assert store.production() == books and history(store) == [books]
    assert store.decision(movies) is None


@pytest.mark.skipif(not MOVIELENS.exists(), reason="MovieLens ratings not present")
def test_the_movielens_model_is_refused_over_a_goodbooks_production(store: ModelStore) -> None:
    with MOVIELENS.open(newline="") as handle:
        movies = sorted({int(row["movieId"]) for row in csv.DictReader(handle)})
    books = save(store, **items(*range(1, 10_001)))  # goodbooks' book ids
    movielens = save(store, **items(*movies))
    store.set_production(books)
    shared = sum(movie <= 10_000 for movie in movies)
    assert shared > len(movies) / 2  # more than half of its ids are book ids by chance

    with pytest.raises(
        CatalogueMismatch, match=f"they share {shared:,} of the {len(movies) + 10_000 - shared:,} items"
    ):
        store.set_production(movielens)


def test_force_promotes_over_another_catalogue(store: ModelStore) -> None:
    books, movies = save(store, **items(1, 2, 3, 4)), save(store, **items(7, 8, 9))
    store.set_production(books)

    assert store.set_production(movies, force=True) == books
    assert store.production() == movies


@pytest.mark.parametrize(
    "candidate",
    [range(1, 201), range(1, 51), range(26, 126)],
    ids=["catalogue doubled", "catalogue halved", "three quarters shared"],
)
def test_a_catalogue_that_grew_shrank_or_changed_a_little_passes(store: ModelStore, candidate: range) -> None:
    production, version = save(store, **items(*range(1, 101))), save(store, **items(*candidate))
    store.set_production(production)

    store.set_production(version)

    assert store.production() == version


def test_the_first_promotion_and_versions_without_item_ids_are_not_compared(store: ModelStore) -> None:
    recorded, unknown, other = save(store, **items(1, 2)), save(store), save(store, **items(5, 6))

    store.set_production(recorded)  # nothing in production yet
    store.set_production(unknown)  # no id maps: nothing to compare
    store.set_production(other)

    assert store.production() == other


def test_ids_are_compared_as_strings(store: ModelStore) -> None:
    production = save(store, id_maps={"users": [], "items": [1, 2, 3]})
    version = save(store, **items(1, 2, 3))
    store.set_production(production)

    store.set_production(version)

    assert store.production() == version


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


def reject(store: ModelStore, version: str) -> str:
    store.record_decision(version, "rejected", "candidate ndcg@10 0.1000 is worse than production's 0.2000")
    return version


def test_retain_keeps_the_newest_and_production(store: ModelStore) -> None:
    versions = [save(store) for _ in range(5)]
    store.set_production(versions[0])

    deleted = store.retain(keep_versions=2, keep_production=1)

    assert deleted == versions[1:3]
    assert [v["version"] for v in store.list()] == [versions[0], *versions[3:]]


def test_retain_keeps_the_last_production_versions_however_old(store: ModelStore) -> None:
    productions = [save(store) for _ in range(4)]
    for version in productions:
        store.set_production(version)
    experiments = [save(store) for _ in range(3)]

    deleted = store.retain(keep_versions=1, keep_production=3)

    assert deleted == [productions[0], *experiments[:2]]
    assert [v["version"] for v in store.list()] == [*productions[1:], experiments[2]]
    assert store.roll_back()[0] == productions[2] and store.roll_back()[0] == productions[1]


def test_retain_drops_rejected_candidates_before_older_versions(store: ModelStore) -> None:
    production = save(store)
    store.set_production(production)
    experiment = save(store)  # trained by hand, never judged
    rejected = [reject(store, save(store)) for _ in range(2)]
    newest = save(store)

    deleted = store.retain(keep_versions=2, keep_production=3)

    assert deleted == rejected
    assert [v["version"] for v in store.list()] == [production, experiment, newest]


def test_a_rejected_version_is_recognisable_in_the_listing(store: ModelStore) -> None:
    production, candidate, undecided = save(store), save(store), save(store)
    store.set_production(production, reason="gate passed")
    reject(store, candidate)

    listing = {v["version"]: v for v in store.list()}

    assert (listing[production]["decision"], listing[production]["decision_reason"]) == ("promoted", "gate passed")
    assert listing[candidate]["decision"] == "rejected"
    assert "worse than production" in listing[candidate]["decision_reason"]
    assert listing[undecided]["decision"] is None
    assert store.verify(candidate) == store.root / candidate  # the decision record is not one of its checked files


def test_a_decision_is_promoted_or_rejected(store: ModelStore) -> None:
    with pytest.raises(ValidationError, match="decision must be 'promoted' or 'rejected'"):
        store.record_decision(save(store), "maybe", "why not")
    with pytest.raises(VersionNotFound):
        store.record_decision("v20990101T000000000000Z", "rejected", "gone")


def test_listing_summarises_the_data_and_the_gate_metric(store: ModelStore) -> None:
    fingerprint = {"ratings": {"path": "/data/ratings.csv", "rows": 6000, "users": 300, "items": 200, "bytes": 9}}
    version = save(store, data_fingerprint=fingerprint, gate_metric="ndcg@10", metrics={"ndcg@10": 0.3})

    [summary] = store.list()

    assert summary["data"] == {"source": "/data/ratings.csv", "rows": 6000, "users": 300, "items": 200}
    assert summary["gate_metric"] == "ndcg@10" and summary["version"] == version
