"""`bookrec models ...` through `bookrec.cli.main`, with the store in tmp_path and Redis faked."""

from __future__ import annotations

import json
from pathlib import Path

import fakeredis
import pytest

from bookrec.cli import main
from bookrec.commands import models as models_command
from bookrec.model_store.store import ModelStore
from bookrec.plot import plot_version
from bookrec.shared.errors import ValidationError
from bookrec.shared.keys import Keys

KEYS = Keys("t:")
UNKNOWN = "v20990101T000000000000Z"
FINGERPRINT = {
    "ratings": {
        "path": "/srv/data/ratings.csv",
        "sha256": "abc123def4567890",
        "bytes": 81234,
        "rows": 6000,
        "users": 300,
        "items": 200,
        "duplicates_dropped": 0,
    },
    "test": None,
    "books": {"path": "/srv/data/books.csv", "sha256": "fedcba9876543210", "bytes": 5120},
    "train_rows": 4500,
    "test_rows": 1500,
}
METADATA = {
    "params": {"dim": 10, "epochs": 3},
    "gate_metric": "ndcg@10",
    "id_maps": {"users": ["1", "2"], "items": [str(i) for i in range(1, 201)]},
    "data_fingerprint": FINGERPRINT,
    "history": {"loss": [1.0, 0.8], "val_loss": [1.1, 0.9]},
    "metrics": {"ndcg@10": 0.1234, "precision@10": 0.05, "rmse": 0.8765},
    "baselines": {"popularity": {"ndcg@10": 0.0456}, "global_mean": {"rmse": 1.0101}},
}


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: fakeredis.FakeServer) -> ModelStore:
    monkeypatch.setenv("BOOKREC_MODEL_STORE", str(tmp_path / "models"))
    monkeypatch.setenv("BOOKREC_KEY_PREFIX", KEYS.prefix)
    monkeypatch.setattr(models_command, "_connect", lambda settings: fakeredis.FakeRedis(server=server))
    return ModelStore(tmp_path / "models")


def save(store: ModelStore, **changes: object) -> str:
    """Save a one-file version carrying METADATA (with `changes`) and return its id."""
    with store.new_version(kind_hint="deep") as writer:
        (writer.path / "weights.bin").write_bytes(b"weights")
        writer.finish({**METADATA, **changes})
    return writer.version


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(["models", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_prints_data_gate_metric_and_state_and_the_production_marker(store: ModelStore, capsys) -> None:
    old, rejected, new, undecided = save(store), save(store), save(store), save(store)
    store.set_production(old)
    store.record_decision(rejected, "rejected", "candidate ndcg@10 0.1 is worse than production's 0.2")
    store.set_production(new)

    code, out, _ = run(capsys, "list")

    assert code == 0
    header, _rule, *rows, legend = out.splitlines()
    assert header.split() == [
        "VERSION",
        "KIND",
        "CREATED",
        "(UTC)",
        "DATA",
        "ROWS",
        "USERS",
        "ITEMS",
        "GATE",
        "METRIC",
        "STATE",
    ]
    cells = {row[2:].split()[0]: (row[0], row[2:].split()[1:]) for row in rows}
    assert list(cells) == [old, rejected, new, undecided]
    assert cells[old] == (
        " ",
        ["deep", *cells[old][1][1:3], "ratings.csv", "6,000", "300", "200", "ndcg@10", "0.1234", "promoted"],
    )
    assert cells[rejected][1][-1] == "rejected"
    assert cells[new][0] == "*" and cells[new][1][-1] == "production"
    assert cells[undecided][1][-1] == "-"
    assert legend == "* = in production"


def test_list_json_gives_one_summary_per_version(store: ModelStore, capsys) -> None:
    version = save(store)
    store.set_production(version)

    code, out, _ = run(capsys, "list", "--json")

    assert code == 0
    [summary] = json.loads(out)
    assert summary["version"] == version
    assert summary["kind"] == "deep"
    assert summary["production"] is True
    assert summary["status"] == "ok"
    assert summary["metrics"] == METADATA["metrics"]
    assert summary["data"] == {"source": "/srv/data/ratings.csv", "rows": 6000, "users": 300, "items": 200}
    assert summary["gate_metric"] == "ndcg@10"
    assert (summary["decision"], summary["decision_reason"]) == ("promoted", "manual")


def test_list_of_an_empty_store_says_so(store: ModelStore, capsys) -> None:
    code, out, _ = run(capsys, "list")

    assert code == 0
    assert "no model versions" in out


def test_show_summarises_metadata_and_compares_with_baselines(store: ModelStore, capsys) -> None:
    version = save(store)

    code, out, _ = run(capsys, "show", version)

    assert code == 0
    assert "dim=10, epochs=3" in out
    lines = out.splitlines()
    data_header = next(i for i, line in enumerate(lines) if line.startswith("DATA"))
    assert lines[data_header].split() == ["DATA", "PATH", "ROWS", "USERS", "ITEMS", "BYTES", "SHA256"]
    assert lines[data_header + 2].split() == [
        "ratings",
        "/srv/data/ratings.csv",
        "6,000",
        "300",
        "200",
        "81,234",
        "abc123def456",
    ]
    assert lines[data_header + 3].split() == ["books", "/srv/data/books.csv", "-", "-", "-", "5,120", "fedcba987654"]
    assert lines[data_header + 4] == "split: 4,500 train rows, 1,500 test rows"
    assert "{" not in out  # no raw dict
    header = next(line for line in out.splitlines() if line.startswith("METRIC"))
    assert header.split() == ["METRIC", "MODEL", "POPULARITY", "GLOBAL_MEAN"]
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if "@10" in line or "rmse" in line}
    assert rows["ndcg@10"] == ["0.1234", "0.0456", "-"]
    assert rows["rmse"] == ["0.8765", "-", "1.0101"]


def test_show_json_is_the_whole_metadata_with_the_decision(store: ModelStore, capsys) -> None:
    version = save(store)
    store.record_decision(version, "rejected", "worse than production")

    code, out, _ = run(capsys, "show", version, "--json")
    _, text, _ = run(capsys, "show", version)

    assert code == 0
    shown = json.loads(out)
    assert shown["decision"] == store.decision(version) and shown["decision"]["decision"] == "rejected"
    assert {k: v for k, v in shown.items() if k != "decision"} == store.metadata(version)
    assert "decision    rejected (worse than production)" in text


def test_show_plot_writes_a_png(store: ModelStore, tmp_path: Path, capsys) -> None:
    version = save(store)
    png = tmp_path / "curves.png"

    code, _, _ = run(capsys, "show", version, "--plot", str(png))

    assert code == 0
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_plot_copes_with_a_version_without_history_or_baselines(tmp_path: Path) -> None:
    png = plot_version({"version": "v1", "metrics": {"rmse": 0.9}}, tmp_path / "bare.png")

    assert png.read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir()] == ["bare.png"]


def test_plot_refuses_an_unknown_image_format(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=".png"):
        plot_version(METADATA, tmp_path / "curves.xyz")

    assert list(tmp_path.iterdir()) == []


def test_promote_and_rollback_move_the_record_and_the_pointer(store: ModelStore, server, capsys) -> None:
    first, second = save(store), save(store)
    redis = fakeredis.FakeRedis(server=server)

    assert run(capsys, "promote", first)[0] == 0
    code, out, _ = run(capsys, "promote", second, "--reason", "better ndcg", "--json")
    assert code == 0
    event = json.loads(out)
    assert (event["event"], event["version"], event["previous"], event["reason"]) == (
        "model_promoted",
        second,
        first,
        "better ndcg",
    )
    assert redis.get(KEYS.model_current) == second.encode()

    code, out, _ = run(capsys, "rollback", "--json")

    assert code == 0
    assert (json.loads(out)["version"], json.loads(out)["reason"]) == (first, "rollback")
    assert store.production() == first
    assert redis.get(KEYS.model_current) == first.encode()


def test_rollback_goes_back_one_step_at_a_time_then_says_there_is_nothing_left(store: ModelStore, capsys) -> None:
    v1, v2, v3 = save(store), save(store), save(store)
    for version in (v1, v2, v3):
        assert run(capsys, "promote", version)[0] == 0

    assert run(capsys, "rollback")[1] == f"rolled back to {v2} (previously {v3}); workers are switching to it\n"
    assert run(capsys, "rollback")[1].startswith(f"rolled back to {v1} (previously {v2})")
    code, out, err = run(capsys, "rollback")

    assert (code, out) == (3, "")
    assert err.startswith("bookrec: error: nothing to roll back to") and err.count("\n") == 1
    assert store.production() == v1


def test_promote_refuses_another_catalogue_unless_forced(store: ModelStore, server, capsys) -> None:
    books = save(store)
    movies = save(store, id_maps={"users": [], "items": [str(i) for i in range(1000, 1200)]})
    assert run(capsys, "promote", books)[0] == 0

    code, out, err = run(capsys, "promote", movies)

    assert (code, out) == (3, "")
    assert err.startswith(f"bookrec: error: refusing to promote {movies} (trained on /srv/data/ratings.csv")
    assert f"over production {books}" in err and f"bookrec models promote {movies} --force" in err
    assert err.count("\n") == 1
    assert store.production() == books
    code, out, _ = run(capsys, "promote", movies, "--force", "--json")
    assert (code, json.loads(out)["version"]) == (0, movies)
    assert fakeredis.FakeRedis(server=server).get(KEYS.model_current) == movies.encode()


def test_promote_with_redis_down_updates_the_store_and_fails_clearly(store: ModelStore, server, capsys) -> None:
    version = save(store)
    server.connected = False

    code, _, err = run(capsys, "promote", version)

    assert code == 4
    assert err.count("\n") == 1
    assert "store record was updated" in err
    assert store.production() == version


def test_delete_removes_a_version_and_refuses_production(store: ModelStore, capsys) -> None:
    production, other = save(store), save(store)
    store.set_production(production)

    code, out, _ = run(capsys, "delete", other, "--json")
    assert (code, json.loads(out)) == (0, {"deleted": other})

    code, _, err = run(capsys, "delete", production)
    assert code == 3
    assert "is the production model" in err
    assert [v["version"] for v in store.list()] == [production]


@pytest.mark.parametrize("action", ["show", "promote", "delete"])
def test_unknown_version_is_one_line_and_non_zero(store: ModelStore, capsys, action: str) -> None:
    save(store)

    code, out, err = run(capsys, action, UNKNOWN)

    assert code == 3
    assert out == ""
    assert err.startswith(f"bookrec: error: model version {UNKNOWN} not found")
    assert err.count("\n") == 1


def test_a_path_instead_of_a_version_is_refused(store: ModelStore, capsys) -> None:
    code, _, err = run(capsys, "show", "../etc")

    assert code == 2
    assert "not a model version id" in err


def ratings_file(path: Path, first_item: int) -> Path:
    """A tiny ratings file whose 40 books are ids first_item..first_item+39."""
    rows = [f"{u},{first_item + (u * 7 + k) % 40},{1 + (u + k) % 5}" for u in range(1, 61) for k in range(8)]
    path.write_text("user_id,book_id,rating\n" + "\n".join(rows) + "\n")
    return path


def test_train_promote_refuses_another_catalogue_unless_forced(
    store: ModelStore, server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from bookrec.commands import train as train_command

    monkeypatch.setattr(train_command, "redis_client", lambda settings: fakeredis.FakeRedis(server=server))
    train = ["train", "--model", "mf", "--dim", "4", "--epochs", "1", "--promote"]
    assert main([*train, "--ratings", str(ratings_file(tmp_path / "books.csv", 1))]) == 0
    books_version = store.production()
    other = str(ratings_file(tmp_path / "movies.csv", 5000))
    capsys.readouterr()

    refused = main([*train, "--ratings", other])

    assert refused == 3 and store.production() == books_version
    assert "catalogue" in capsys.readouterr().err
    assert len(store.list()) == 2  # the refused version stays saved
    assert main([*train, "--ratings", other, "--force"]) == 0
    assert store.production() != books_version
