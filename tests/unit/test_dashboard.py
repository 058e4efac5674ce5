"""The dashboard's web app through Starlette's TestClient on fakeredis, a model store of metadata-only versions and a
SQLite ratings store: what each page shows, the token every action needs (and the log it leaves), the error pages, no
secret on any page, and no TensorFlow in its process. The real processes and a real browser: test_dashboard_browser."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import fakeredis
import pytest
from rq import Queue
from rq.serializers import JSONSerializer
from starlette.testclient import TestClient

from bookrec.dashboard.app import create_app
from bookrec.dashboard.charts import BOTTOM, LEFT, RIGHT, TOP, learning_curves, version_charts
from bookrec.dashboard.versions import metrics_table
from bookrec.ingest.consumer import GROUP
from bookrec.ingest.lag import ingest_lag
from bookrec.model_store.promotion import promote
from bookrec.model_store.store import ModelStore
from bookrec.producer import Client
from bookrec.ratings.store import RatingsStore
from bookrec.shared.errors import ConfigError
from bookrec.shared.keys import QUEUE_RECOMMEND, Keys
from bookrec.shared.ratings import RatingEvent
from bookrec.shared.settings import Settings
from tests.conftest import loaded_after
from tests.unit.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]
KEYS = Keys()
TOKEN = "t0ken-for-the-dashboard-tests"
REDIS_PASSWORD = "redis-pa55word"
DB_PASSWORD = "db-pa55word"
ITEMS = [str(i) for i in range(1, 41)]
BOOKS = [
    {"book_id": "1", "title": "The Hunger Games", "authors": "Suzanne Collins", "original_publication_year": "2008",
     "image_url": "https://images.gr-assets.com/books/1447303603m/2767052.jpg"},
    {"book_id": "2", "title": "Harry Potter and the Sorcerer's Stone", "authors": "J.K. Rowling",
     "original_publication_year": "1997", "image_url": "https://images.gr-assets.com/books/1474154022m/3.jpg"},
]  # fmt: skip


def save(models: ModelStore, items: list[str] = ITEMS, ndcg: float = 0.21) -> str:
    """A version with the metadata the dashboard reads (no SavedModel: the pages never load one)."""
    with models.new_version(kind_hint="mult-dae") as writer:
        (writer.path / "weights.bin").write_bytes(b"w")
        writer.finish(
            {
                "task": "ranking",
                "gate_metric": "ndcg@10",
                "metrics": {"ndcg@10": ndcg, "recall@10": 0.3, "rmse": 0.9},
                "baselines": {
                    "popularity": {"ndcg@10": 0.1, "recall@10": 0.35},
                    "bias": {"rmse": 0.95},
                },
                "history": {"loss": [0.9, 0.6, 0.5], "val_loss": [0.95, 0.7, 0.65], "lr": [0.001, 0.001, 0.001]},
                "id_maps": {"users": ["42", "7"], "items": items},
                "params": {"dim": 64},
            }
        )
    return writer.version


@pytest.fixture
def models(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


@pytest.fixture
def versions(models: ModelStore, redis: fakeredis.FakeRedis) -> tuple[str, str]:
    """Two versions, the first in production."""
    first, second = save(models), save(models, ndcg=0.25)
    promote(models, redis, KEYS, first)
    return first, second


@pytest.fixture
def settings(tmp_path: Path, models: ModelStore, ratings_store: RatingsStore) -> Settings:
    return Settings(
        redis_url=f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0",
        model_store=models.root,
        database_url=ratings_store.url,
        dashboard_token=TOKEN,
    )


def web(settings: Settings, redis: fakeredis.FakeRedis) -> TestClient:
    """The dashboard app of `settings` on the fakeredis `redis`."""
    return TestClient(create_app(settings, Client(settings=settings, connection=redis)))


@pytest.fixture
def app(settings: Settings, redis: fakeredis.FakeRedis, versions: tuple[str, str]) -> TestClient:
    with web(settings, redis) as client:
        yield client


def cached_list(redis: fakeredis.FakeRedis, user: str, version: str, through: str | None = None) -> None:
    entry = {
        "user_id": int(user),
        "model_version": version,
        "generated_at": "2026-12-03T06:00:00.000000Z",
        "n": 10,
        "fallback": None,
        "ratings_through": through,
        "items": [
            {"book_id": 2, "score": 3.14159, "title": BOOKS[1]["title"], "authors": "J.K. Rowling", "year": 1997,
             "image_url": BOOKS[1]["image_url"]},
            {"book_id": 9, "score": 2.5, "title": None, "authors": None, "year": None, "image_url": None},
        ],
    }  # fmt: skip
    redis.set(KEYS.recs(user), json.dumps(entry))


# ---- pages ------------------------------------------------------------------------------------------------------


def test_the_overview_shows_production_beside_its_baselines_with_curves_queues_and_the_ingest(
    app: TestClient, redis: fakeredis.FakeRedis, versions: tuple[str, str], ratings_store: RatingsStore
) -> None:
    for book in ITEMS[:5]:
        redis.xadd(KEYS.ratings_stream, {"user_id": "42", "book_id": book, "rating": "4"})
    redis.xgroup_create(KEYS.ratings_stream, GROUP, id="0")
    redis.xreadgroup(GROUP, "host-1", {KEYS.ratings_stream: ">"}, count=2)
    redis.xadd(KEYS.ratings_dead, {"user_id": "42", "book_id": "x", "reason": "rating is missing"})
    ratings_store.apply([RatingEvent("42", "1", 4.0, 1.0), RatingEvent("42", "2", 5.0, 2.0)])

    page = app.get("/")

    assert page.status_code == 200
    html = page.text
    assert versions[0] in html and "ndcg@10" in html and "popularity" in html and "bias" in html
    assert 'class="num better">0.2100' in html, "ndcg@10 beats the popularity baseline"
    assert html.count("<svg") == 2, "one chart for loss (training and validation), one for lr"
    assert 'class="series validation"' in html
    assert "2 ratings written to the store in the last 60 s" in html
    assert "2 delivered and not acknowledged" in html and "<code>host-1</code>" in html
    assert "rating is missing" in html, "the newest dead letters are listed"
    for queue in ("recommend", "fresh", "refresh", "retrain"):
        assert f'data-queue="{queue}"' in html
    assert "none (no scheduler running)" in html


def test_the_versions_page_lists_every_version_with_promote_and_rollback(
    app: TestClient, versions: tuple[str, str]
) -> None:
    page = app.get("/versions")

    assert page.status_code == 200
    assert page.text.index(versions[1]) < page.text.index(versions[0]), "newest first"
    assert f'name="version" value="{versions[1]}"' in page.text, "a promote button for the version not in production"
    assert f'name="version" value="{versions[0]}"' not in page.text, "none for production itself"
    assert 'id="rollback" disabled' in page.text, "nothing to roll back to yet"


def test_a_version_s_page_and_a_version_that_does_not_exist(app: TestClient, versions: tuple[str, str]) -> None:
    page = app.get(f"/versions/{versions[1]}")
    assert page.status_code == 200 and "dim=64" in page.text and "0.2500" in page.text

    missing = app.get("/versions/v20990101T000000000000Z")
    assert missing.status_code == 404
    assert "model version v20990101T000000000000Z not found" in missing.text

    garbage = app.get("/versions/latest")
    assert garbage.status_code == 404 and "is not a model version id" in garbage.text


def test_a_reader_s_page_shows_their_list_ratings_covers_and_freshness(
    app: TestClient, redis: fakeredis.FakeRedis, versions: tuple[str, str], ratings_store: RatingsStore
) -> None:
    ratings_store.upsert_books(BOOKS)
    ratings_store.apply([RatingEvent("42", "1", 4.0, 10.0), RatingEvent("42", "77", 2.5, 20.0)])
    ratings_store.apply([RatingEvent("42", "5", None, 30.0, op="delete")])
    cached_list(redis, "42", versions[0], through="1764590400123-0")

    page = app.get("/reader", params={"user": "42"})

    assert page.status_code == 200
    html = page.text
    assert 'alt="cover of Harry Potter and the Sorcerer&#39;s Stone"' in html, "the list's covers, with alt text"
    assert "3.1416" in html and "book 9" in html, "scores; a book without metadata by its id"
    assert "1764590400123-0" in html and "2025-12-01 12:00:00 UTC" in html, "ratings_through and its time"
    assert "up to date" in html and "production" in html
    assert "2 in the ratings store" in html, "live ratings only: the removed one is not counted"
    assert html.index("book 77 (not in the catalogue)") < html.index('title="The Hunger Games"'), "newest first"
    assert "2.5 ★" in html


def test_a_list_behind_the_reader_s_delta_says_a_recompute_is_due(
    app: TestClient, redis: fakeredis.FakeRedis, versions: tuple[str, str], ratings_store: RatingsStore
) -> None:
    from bookrec.shared import delta
    from bookrec.shared.ratings import StoredRating

    cached_list(redis, "42", versions[1], through="1764590400123-0")
    delta.write(redis, KEYS, [StoredRating("42", "3", 5.0, 40.0, 41.0)], {"42": "1764590400999-0"})

    html = app.get("/reader", params={"user": "42"}).text

    assert "a fresh recompute is due" in html and "1764590400999-0" in html
    assert "not production" in html, "the list was computed by a version that is not production"
    assert "1 rated, 0 removed" in html


def test_a_reader_with_no_data_is_a_clear_404_and_a_bad_id_a_400(app: TestClient) -> None:
    nobody = app.get("/reader", params={"user": "nobody-here"})
    assert nobody.status_code == 404 and "Nothing is known about reader nobody-here" in nobody.text

    bad = app.get("/reader", params={"user": "a b"})
    assert bad.status_code == 400 and "holds whitespace or glob characters" in bad.text

    assert app.get("/reader").status_code == 200, "without a user: the search form"


def test_unknown_routes_and_methods_are_error_pages(app: TestClient) -> None:
    assert app.get("/nowhere").status_code == 404
    wrong = app.get("/promote")
    assert wrong.status_code == 405 and "Method not allowed" in wrong.text


def test_redis_down_is_a_503_naming_redis_without_its_password(
    settings: Settings, server: fakeredis.FakeServer, redis: fakeredis.FakeRedis, versions: tuple[str, str]
) -> None:
    with web(settings, redis) as client:
        server.connected = False
        page = client.get("/")

    assert page.status_code == 503
    assert "redis://:***@127.0.0.1:6379/0" in page.text and REDIS_PASSWORD not in page.text


def test_a_missing_ratings_store_is_said_on_the_page_and_not_created(
    settings: Settings, redis: fakeredis.FakeRedis, versions: tuple[str, str], tmp_path: Path
) -> None:
    absent = tmp_path / "absent.db"
    with web(settings.with_overrides(database_url=f"sqlite:///{absent}"), redis) as client:
        page = client.get("/")
        reader = client.get("/reader", params={"user": "42"})

    assert page.status_code == 200 and f"no ratings store at sqlite:///{absent}" in page.text
    assert reader.status_code == 404 and f"({absent} does not exist)" in reader.text
    assert not absent.exists()


def test_no_secret_reaches_any_page(redis: fakeredis.FakeRedis, models: ModelStore, versions: tuple[str, str]) -> None:
    settings = Settings(
        redis_url=f"redis://bookrec:{REDIS_PASSWORD}@127.0.0.1:6379/0?password={REDIS_PASSWORD}",
        model_store=models.root,
        database_url=f"postgresql+psycopg://bookrec:{DB_PASSWORD}@127.0.0.1:1/bookrec",  # refuses: its error is shown
        dashboard_token=TOKEN,
    )
    with web(settings, redis) as client:
        pages = [
            client.get("/"),
            client.get("/versions"),
            client.get(f"/versions/{versions[0]}"),
            client.get("/reader", params={"user": "42"}),
            client.get("/nowhere"),
            client.post("/promote", data={"version": versions[1], "token": "wrong" * 4}),
        ]

    for page in pages:
        for secret in (REDIS_PASSWORD, DB_PASSWORD, TOKEN):
            assert secret not in page.text, f"{page.url} shows a secret"
    assert "postgresql+psycopg://bookrec:***@127.0.0.1:1/bookrec" in pages[0].text


def test_every_page_carries_a_content_security_policy(app: TestClient) -> None:
    headers = app.get("/versions").headers
    policy = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "form-action 'self'" in policy and "default-src 'none'" in policy
    assert headers["x-content-type-options"] == "nosniff"
    assert app.get("/static/dashboard.css").status_code == 200


# ---- actions ------------------------------------------------------------------------------------------------------


def test_a_promotion_needs_the_token_in_the_form_or_a_bearer_header(
    app: TestClient, models: ModelStore, redis: fakeredis.FakeRedis, versions: tuple[str, str], caplog
) -> None:
    first, second = versions
    caplog.set_level(logging.INFO, logger="bookrec.dashboard")

    missing = app.post("/promote", data={"version": second})
    wrong = app.post("/promote", data={"version": second, "token": TOKEN + "x"})
    assert (missing.status_code, wrong.status_code) == (403, 403)
    assert "promotion refused: this action needs the dashboard&#39;s token" in missing.text
    assert "not the dashboard&#39;s token" in wrong.text
    assert models.production() == first and redis.get(KEYS.model_current) == first.encode()

    done = app.post("/promote", data={"version": second}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert done.status_code == 200 and f"promoted {second} (was {first})" in done.text
    assert models.production() == second and redis.get(KEYS.model_current) == second.encode()
    assert Queue("refresh", connection=redis, serializer=JSONSerializer).count == 1, "the promotion's refresh"

    back = app.post("/promote", data={"version": first, "token": TOKEN})
    assert back.status_code == 200 and models.production() == first
    assert models.decision(first)["reason"] == "bookrec dashboard"

    assert caplog.text.count("refused promote from testclient") == 2
    assert f"promoted {second} (was {first}) for testclient" in caplog.text
    assert TOKEN not in caplog.text


def test_a_read_only_dashboard_refuses_every_action(
    settings: Settings, redis: fakeredis.FakeRedis, models: ModelStore, versions: tuple[str, str]
) -> None:
    with web(settings.with_overrides(dashboard_token=None), redis) as client:
        page = client.get("/versions")
        replies = [
            client.post("/promote", data={"version": versions[1], "token": TOKEN}),
            client.post("/rollback", headers={"Authorization": f"Bearer {TOKEN}"}),
            client.post("/recompute", data={"user": "42", "token": TOKEN}),
        ]

    assert "read-only" in page.text and f'value="{versions[1]}" disabled' in page.text
    assert [r.status_code for r in replies] == [403, 403, 403]
    assert all("this dashboard is read-only" in r.text for r in replies)
    assert models.production() == versions[0]
    assert Queue(QUEUE_RECOMMEND, connection=redis, serializer=JSONSerializer).count == 0


def test_rollback_goes_back_one_step_and_says_when_there_is_nothing_to_roll_back_to(
    app: TestClient, models: ModelStore, redis: fakeredis.FakeRedis, versions: tuple[str, str]
) -> None:
    first, second = versions
    app.post("/promote", data={"version": second, "token": TOKEN})
    assert f"Roll back to {first}" in app.get("/versions").text

    done = app.post("/rollback", data={"token": TOKEN})
    assert done.status_code == 200 and f"rolled back to {first} (was {second})" in done.text
    assert redis.get(KEYS.model_current) == first.encode()

    nothing = app.post("/rollback", data={"token": TOKEN})
    assert nothing.status_code == 409 and "nothing to roll back to" in nothing.text


def test_a_version_of_another_catalogue_is_refused_unless_forced(
    app: TestClient, models: ModelStore, versions: tuple[str, str]
) -> None:
    other = save(models, items=[f"m{i}" for i in range(40)])

    refused = app.post("/promote", data={"version": other, "token": TOKEN})
    assert refused.status_code == 409 and f"refusing to promote {other}" in refused.text
    assert models.production() == versions[0]

    forced = app.post("/promote", data={"version": other, "token": TOKEN, "force": "on"})
    assert forced.status_code == 200 and models.production() == other


def test_promoting_a_version_that_does_not_exist_is_a_404(app: TestClient, models: ModelStore) -> None:
    reply = app.post("/promote", data={"version": "v20990101T000000000000Z", "token": TOKEN})
    assert reply.status_code == 404 and "not found" in reply.text


def test_recompute_enqueues_a_recommend_job_for_the_reader_only_with_the_token(
    app: TestClient, redis: fakeredis.FakeRedis, versions: tuple[str, str]
) -> None:
    queue = Queue(QUEUE_RECOMMEND, connection=redis, serializer=JSONSerializer)

    refused = app.post("/recompute", data={"user": "42"})
    assert refused.status_code == 403 and queue.count == 0

    done = app.post("/recompute", data={"user": "42", "token": TOKEN})
    assert done.status_code == 200
    (job,) = queue.get_jobs()
    assert job.func_name == "worker.jobs.recommend" and job.kwargs["user_ids"] == ["42"]
    assert f"recompute enqueued as recommend job {job.id}" in done.text


# ---- the parts ----------------------------------------------------------------------------------------------------


def test_learning_curves_pair_training_with_validation_inside_the_plot_area() -> None:
    charts = learning_curves({"loss": [3.0, 2.0, float("nan"), 1.0], "val_loss": [3.5, 2.5], "val_ndcg@10": [0.1]})

    assert [c.title for c in charts] == ["loss", "ndcg@10"]
    loss = charts[0]
    assert [line.label for line in loss.lines] == ["training", "validation"]
    assert loss.lines[0].values == (3.0, 2.0, 1.0), "a non-finite value is left out"
    assert loss.lines[0].points[2][0] == RIGHT, "the others keep their epochs"
    xs, ys = zip(*(p for line in loss.lines for p in line.points))
    assert min(xs) == LEFT and max(xs) == RIGHT and min(ys) == TOP and max(ys) == BOTTOM
    assert charts[1].lines[0].points[0] == pytest.approx(((LEFT + RIGHT) / 2, (TOP + BOTTOM) / 2)), "one point: centred"
    assert learning_curves(None) == [] and learning_curves({"loss": []}) == []


def test_a_version_s_learning_curve_is_drawn_along_its_own_axis_and_history_only_without_one() -> None:
    steps = {
        "x": "step",
        "values": [0, 10, 20],
        "measure": "loss",
        "training": [3.0, 2.0, 1.0],
        "validation": [3.5, 2.5, 2.0],
    }
    search = {
        "x": "l2",
        "values": [1000.0, 10.0, 100.0],
        "measure": "ndcg@10",
        "training": None,
        "validation": [0.2, 0.1, 0.3],
    }
    history = {"loss": [3.0, 2.0]}

    (chart,) = version_charts({"learning_curve": steps, "history": history})
    assert (chart.title, chart.x_label, [line.label for line in chart.lines]) == (
        "loss",
        "gradient step",
        ["training", "validation"],
    )
    (chart,) = version_charts({"learning_curve": search})
    assert chart.x_label == "l2 tried (log scale)" and chart.lines[0].values == (0.1, 0.3, 0.2), "in the order of l2"
    assert [x for x, _ in chart.lines[0].points] == pytest.approx([LEFT, (LEFT + RIGHT) / 2, RIGHT]), "log-spaced"
    assert [c.title for c in version_charts({"learning_curve": {"x": "step", "values": []}, "history": history})] == [
        "loss"
    ]


def test_the_metrics_table_marks_what_beats_every_baseline_in_its_direction() -> None:
    table = metrics_table(
        {
            "gate_metric": "rmse",
            "metrics": {"rmse": 0.8, "ndcg@10": 0.05, "mae": 0.7, "test_rows": 1540},
            "baselines": {"bias": {"rmse": 0.9, "ndcg@10": 0.04, "mae": 0.7}, "popularity": {"ndcg@10": 0.06}},
        }
    )
    rows = {row.name: row for row in table.rows}
    assert table.baselines == ("bias", "popularity")
    assert rows["rmse"].standing == "better" and rows["rmse"].gate, "an error: lower is better"
    assert rows["ndcg@10"].standing == "worse" and rows["ndcg@10"].baselines == (0.04, 0.06)
    assert rows["mae"].standing is None, "a tie is neither"
    assert table.counts == (("test_rows", 1540),) and "test_rows" not in rows


def test_the_ingest_lag_counts_pending_undelivered_and_dead(redis: fakeredis.FakeRedis) -> None:
    assert ingest_lag(redis, KEYS).group is False
    ids = [redis.xadd(KEYS.ratings_stream, {"user_id": "1", "book_id": str(b), "rating": "3"}) for b in range(5)]
    before = ingest_lag(redis, KEYS)
    assert (before.group, before.length, before.undelivered) == (False, 5, 5)
    redis.xgroup_create(KEYS.ratings_stream, GROUP, id="0")
    redis.xreadgroup(GROUP, "host-9", {KEYS.ratings_stream: ">"}, count=3)
    redis.xack(KEYS.ratings_stream, GROUP, ids[0])
    redis.xadd(KEYS.ratings_dead, {"reason": "bad"})

    lag = ingest_lag(redis, KEYS)

    assert (lag.group, lag.pending, lag.dead) == (True, 2, 1)
    assert lag.undelivered in (2, None), "2, or unknown where Redis cannot tell"
    assert [(c.name, c.pending) for c in lag.consumers] == [("host-9", 2)]
    assert lag.oldest_age_s is not None and lag.oldest_age_s >= 0


def test_a_reader_s_ratings_come_newest_first_with_their_books(ratings_store: RatingsStore) -> None:
    ratings_store.upsert_books(BOOKS)
    ratings_store.apply([RatingEvent("42", "1", 4.0, 1.0), RatingEvent("42", "2", 3.0, 2.0)])
    ratings_store.apply([RatingEvent("42", "3", 5.0, 3.0), RatingEvent("7", "1", 1.0, 4.0)])
    ratings_store.apply([RatingEvent("42", "3", None, 5.0, op="delete")])

    found = ratings_store.reader_ratings("42", limit=1)

    assert found.total == 2
    assert found.rows == ({"book_id": "2", "rating": 3.0, "ts": 2.0, "title": BOOKS[1]["title"],
                           "authors": "J.K. Rowling", "year": 1997, "image_url": BOOKS[1]["image_url"]},)  # fmt: skip
    assert ratings_store.reader_ratings("nobody").total == 0


def test_rollback_target_is_the_version_a_rollback_would_restore(models: ModelStore, redis) -> None:
    first, second = save(models), save(models)
    assert models.rollback_target() is None
    promote(models, redis, KEYS, first)
    promote(models, redis, KEYS, second)
    assert models.rollback_target() == first


def test_the_dashboard_token_is_checked_and_never_shown() -> None:
    assert Settings.from_env({}).dashboard_token is None
    assert Settings.from_env({"BOOKREC_DASHBOARD_TOKEN": ""}).dashboard_token is None
    assert Settings.from_env({"BOOKREC_DASHBOARD_TOKEN": TOKEN}).dashboard_token == TOKEN
    assert TOKEN not in repr(Settings.from_env({"BOOKREC_DASHBOARD_TOKEN": TOKEN}))
    with pytest.raises(ConfigError, match="is 5 characters; use at least 16") as short:
        Settings.from_env({"BOOKREC_DASHBOARD_TOKEN": "abcde"})
    assert "abcde" not in str(short.value)
    with pytest.raises(ConfigError, match="whitespace"):
        Settings.from_env({"BOOKREC_DASHBOARD_TOKEN": f" {TOKEN}"})


def test_the_command_refuses_a_bad_port_and_an_address_in_use(capsys, monkeypatch) -> None:
    code, _, err = run_cli(["dashboard", "--port", "70000"], capsys)
    assert code == 2 and "port 70000 is not between 1 and 65535" in err

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        monkeypatch.delenv("BOOKREC_DASHBOARD_TOKEN", raising=False)
        code, _, err = run_cli(["dashboard", "--port", str(port)], capsys)
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err

    monkeypatch.setenv("BOOKREC_DASHBOARD_TOKEN", "short")
    code, _, err = run_cli(["dashboard"], capsys)
    assert code == 2 and "BOOKREC_DASHBOARD_TOKEN is 5 characters" in err and "short" not in err


def test_the_dashboard_loads_no_tensorflow() -> None:
    heavy = {"tensorflow", "keras", "pandas", "matplotlib"}
    assert loaded_after("bookrec.commands.dashboard, bookrec.dashboard.app", heavy) == []
