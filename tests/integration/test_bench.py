"""`bookrec bench` at a tiny scale: it runs the real service end to end, reports every figure, and cleans up.

Timings are never asserted here: they belong in the benchmark's own output.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa

from bookrec.bench import PHASES, fresh_lists, ratings_in
from bookrec.bench.catalogue import Size, prepare
from bookrec.bench.figures import FIGURES, FRESH, HEADERS, RATINGS, SERVING, WIDTH, Report, markdown, text
from bookrec.bench.harness import Config, run
from bookrec.bench.service import with_db
from bookrec.model_store.store import ModelStore
from bookrec.shared.errors import BookrecError
from tests.conftest import GOODBOOKS_BOOKS, TEST_REDIS_URL
from tests.integration.test_ratings_postgres import ADMIN_URL, admin  # noqa: F401  (the fixture)

TINY = Size("tiny", users=300, books=200, ratings=6000)


def _leaves(value) -> list[float]:
    return [x for v in value.values() for x in _leaves(v)] if isinstance(value, dict) else [value]


@pytest.mark.integration
@pytest.mark.slow
def test_tiny_serving_run_reports_every_serving_figure_and_leaves_nothing_behind(redis_client, tmp_path: Path) -> None:
    books = GOODBOOKS_BOOKS
    params = {"epochs": 2}  # the default kind, trained briefly
    config = Config(
        TINY,
        TEST_REDIS_URL,
        cache_root=tmp_path,
        books_from=books,
        model_params=params,
        repeats=1,
        ceiling_users=300,
        throughput_users=300,
        latency_requests=20,
        cache_reads=20,
        seed_users=2,
        soak_passes=1,
        soak_single_jobs=20,
        swap_lead_s=0.5,
        phases=("serving",),
    )
    messages: list[str] = []

    document = run(config, notify=messages.append).to_json()

    keys = {figure.key for figure in SERVING}
    assert set(document["figures"]) == keys and set(document["targets"]) == keys and set(document["references"]) == keys
    figures = document["figures"]
    assert all(
        x > 0 for key, value in figures.items() if key not in ("swap_s", "worker_rss_mb") for x in _leaves(value)
    )
    assert figures["swap_s"]["seconds"] > 0 and figures["swap_s"]["failed_jobs"] == 0
    assert figures["worker_rss_mb"]["rss_mb"] > 0
    assert document["references"]["worker_rss_mb"]["jobs"] > 0
    assert document["machine"]["cores"] >= 1 and document["machine"]["date"]
    assert any("synthesising" in m for m in messages) and any("training the base model" in m for m in messages)
    # Nothing left in the benchmark's database; the store is back to its one cached base version.
    assert redis_client.dbsize() == 0
    again: list[str] = []
    prepared = prepare(TINY, tmp_path, books, again.append, params)
    assert not prepared.generated and prepared.base_version is not None
    assert any("reusing the cached catalogue" in m for m in again) and any(
        "reusing the cached base model" in m for m in again
    )
    store = ModelStore(prepared.store)
    assert [v["version"] for v in store.list()] == [prepared.base_version] == [store.production()]


@pytest.mark.integration
@pytest.mark.slow
def test_the_ratings_phase_reports_its_five_figures_and_drops_its_databases(
    redis_client,
    admin: sa.Engine,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[str] = []
    create = ratings_in.Databases.create
    monkeypatch.setattr(ratings_in.Databases, "create", lambda self: made.append(create(self)) or made[-1])
    plan = ratings_in.Plan(postgres_url=ADMIN_URL, events=500, rate=200.0, latency_s=0.5, repeats=1, timeout_s=60)
    config = Config(TINY, TEST_REDIS_URL, cache_root=tmp_path, phases=("ratings",), ratings=plan)
    messages: list[str] = []

    document = run(config, notify=messages.append).to_json()

    keys = {figure.key for figure in RATINGS}
    assert set(document["figures"]) == keys and set(document["targets"]) == keys and set(document["references"]) == keys
    assert all(x > 0 for value in document["figures"].values() for x in _leaves(value))
    assert all(x > 0 for value in document["references"].values() for x in _leaves(value))
    references = document["references"]
    assert references["ingest_sqlite_events_per_s"]["events"] == 500
    assert references["ingest_latency_ms"]["events"] == 100  # 200 events/s for 0.5 s, per store
    assert references["import_postgres_s"]["rows"] == references["snapshot_s"]["rows"] == TINY.ratings
    assert document["details"]["phases"] == ["ratings"] and "model" not in document["details"]
    assert any("bookrec ingest" in m for m in messages) and any("data import" in m for m in messages)
    # Each ingest logged its batches; the Redis database is empty and every PostgreSQL database made is gone.
    logs = tmp_path / TINY.key / "logs"
    assert (
        "applied" in (logs / "ingest-sqlite.log").read_text()
        and "applied" in (logs / "ingest-postgres.log").read_text()
    )
    assert redis_client.dbsize() == 0
    names = [sa.make_url(url).database for url in made]
    with admin.connect() as conn:
        left = conn.execute(sa.text("SELECT datname FROM pg_database WHERE datname = ANY(:names)"), {"names": names})
        assert len(names) == 2 and left.scalars().all() == []  # one for the ingest, one for the import


@pytest.mark.integration
@pytest.mark.slow
def test_the_fresh_phase_reports_its_three_figures_and_leaves_nothing_behind(redis_client, tmp_path: Path) -> None:
    plan = fresh_lists.Plan(
        batch=50,
        throughput_users=100,
        repeats=1,
        single_readers=10,
        plain_requests=20,
        recommend_rate=20.0,
        other_rate=100.0,
        probes=10,
        memory_events=2000,
        timeout_s=120.0,
    )
    books = GOODBOOKS_BOOKS
    config = Config(TINY, TEST_REDIS_URL, cache_root=tmp_path, books_from=books, model_params={"epochs": 2})
    messages: list[str] = []

    document = run(replace(config, phases=("fresh",), fresh=plan), notify=messages.append).to_json()

    keys = {figure.key for figure in FRESH}
    assert set(document["figures"]) == keys and set(document["targets"]) == keys and set(document["references"]) == keys
    figures, references = document["figures"], document["references"]
    assert all(x > 0 for x in _leaves(figures["fresh_list_ms"]) + _leaves(figures["history_throughput_users_per_s"]))
    assert figures["fresh_worker_rss_mb"]["rss_mb"] > 0
    latency = references["fresh_list_ms"]
    assert latency["probes"] == 10 and latency["breakdown_ms"]["probes_split"] == 10, "every probe seen in its delta"
    assert latency["breakdown_ms"]["fresh_jobs"] >= 1 and latency["pending_readers"] >= 0
    assert latency["other_events_per_s"] > 0 and latency["plain_recommend_ms"]["p50"] > 0
    assert all(latency["in_process_one_reader_ms"][step] > 0 for step in ("claim", "score", "write"))
    throughput = references["history_throughput_users_per_s"]
    assert all(throughput[k] > 0 for k in ("index_users_per_s", "no_delta_users_per_s", "read_ms_per_batch"))
    memory = references["fresh_worker_rss_mb"]
    assert memory["events"] == 2000 and memory["jobs"] > 0 and len(memory["rss_after_mb"]) == 2
    assert len(memory["rss_while_sending_mb"]) == 1  # one slice of events
    assert document["details"]["phases"] == ["fresh"] and document["details"]["model"].startswith("mult-dae")
    assert any("training the base model" in m for m in messages) and any("event -> list" in m for m in messages)
    # Nothing left in the benchmark's database; the store holds its one base version, in production.
    assert redis_client.dbsize() == 0
    store = ModelStore(tmp_path / TINY.key / "models")
    assert [v["version"] for v in store.list()] == [store.production()]


def test_a_full_run_has_every_phase_and_a_report_shows_only_what_it_measured(tmp_path: Path) -> None:
    assert Config.full(TEST_REDIS_URL, tmp_path, None).phases == PHASES == ("serving", "ratings", "fresh")
    assert Config.quick_run(TEST_REDIS_URL, tmp_path, None).phases == PHASES
    full = _report()
    ratings_only = Report(
        full.machine,
        {k: v for k, v in full.figures.items() if k in {f.key for f in RATINGS}},
        full.references,
        {"catalogue": TINY.describe(), "phases": ["ratings"]},
    )
    assert [row[0] for row in ratings_only.rows()] == [f.key for f in RATINGS]
    assert set(ratings_only.targets()) == {f.key for f in RATINGS}
    assert "--only ratings" in markdown(ratings_only) and "model" not in markdown(ratings_only)
    with pytest.raises(BookrecError, match="unknown"):
        run(Config(TINY, TEST_REDIS_URL, cache_root=tmp_path, phases=("ratings-in",)))


def _report(**changes) -> Report:
    figures = {
        "throughput_users_per_s": 6000.0,
        "ceiling_users_per_s": 10000.0,
        "latency_ms": {"p50": 5.0, "p99": 20.0},
        "full_refresh_s": 10.0,
        "cache_read_ms": 0.2,
        "swap_s": {"seconds": 1.0, "failed_jobs": 0, "slowest_ms": 40.0},
        "retrain_s": 100.0,
        "worker_rss_mb": {"rss_mb": 900.0, "growth_pct": 1.0},
        "scaling_2_vs_1": 1.8,
        "seed_path_ms_per_user": 400.0,
        "ingest_postgres_events_per_s": 21_000.0,
        "ingest_sqlite_events_per_s": 25_000.0,
        "ingest_latency_ms": {"postgres": {"p50": 8.0, "p99": 40.0}, "sqlite": {"p50": 6.0, "p99": 30.0}},
        "import_postgres_s": 7.0,
        "snapshot_s": {"postgres": 2.0, "sqlite": 1.5},
        "fresh_list_ms": {"p50": 12.0, "p99": 45.0},
        "history_throughput_users_per_s": {"per_process": 6000.0, "of_index": 0.9},
        "fresh_worker_rss_mb": {"rss_mb": 800.0, "growth_pct": 2.0},
    }
    figures.update(changes)
    ingest = {
        "events_per_cpu_s": 30_000.0,
        "xadd_events_per_s": 90_000.0,
        "bare_rows_per_s": 300_000.0,
        "events": 200_000,
        "batch": 1000,
    }
    references = {
        "throughput_users_per_s": {
            "ratio_of_ceiling": 0.6,
            "cpu_ratio_of_ceiling": 0.8,
            "total_users_per_s": 12000.0,
            "processes": 2,
        },
        "ceiling_users_per_s": {"graph_users_per_s": 20000.0},
        "latency_ms": {
            "server_p50": 4.0,
            "server_p99": 18.0,
            "in_process_ms": 1.0,
            "max": 25.0,
            "requests": 2000,
            "lost": 0,
            "runs": 4,
            "all_p50": 5.0,
            "all_p99": 22.0,
        },
        "full_refresh_s": {"users": 53424, "ideal_s": 2.7},
        "cache_read_ms": {"ping_p50_ms": 0.1, "entry_bytes": 2400.0, "redis_bytes_per_entry": 2600.0},
        "swap_s": {"slowest_vs_p99": 2.0, "model_load_s": 0.5, "stale_after_swap": 0, "peak_rss_mb": 812.0},
        "retrain_s": {"fit_s": 80.0, "kind": "mult-dae"},
        "worker_rss_mb": {"jobs": 5000, "rss_before_mb": 890.0, "load_mb": 300.0},
        "scaling_2_vs_1": {
            "one_process_users_per_s": 6600.0,
            "two_processes_users_per_s": 12000.0,
            "one_process_cores": 0.9,
            "two_processes_cores": 1.7,
        },
        "seed_path_ms_per_user": {"service_ms_per_user": 0.1, "speedup": 4000.0, "same_top_n": 5, "users": 5},
        "ingest_postgres_events_per_s": ingest,
        "ingest_sqlite_events_per_s": ingest,
        "ingest_latency_ms": {
            "ping_p50_ms": 0.05,
            "xadd_p50_ms": 0.07,
            "max_ms": {"postgres": 60.0, "sqlite": 45.0},
            "sent_per_s": {"postgres": 1998.0, "sqlite": 1999.0},
            "rate": 2000.0,
            "events": 20_000,
        },
        "import_postgres_s": {
            "rows": 981_756,
            "command_s": 6.5,
            "sqlite_s": 6.0,
            "psql_copy_s": 0.3,
            "psql_copy_keyed_s": 1.4,
        },
        "snapshot_s": {"rows": 981_756, "snapshot_only_s": {"postgres": 1.5, "sqlite": 1.0}, "read_csv_s": 0.3},
        "fresh_list_ms": {
            "max_ms": 60.0,
            "probes": 500,
            "probe_rate": 10.0,
            "fresh_backlog_jobs": 3,
            "stream_lost": 0,
            "other_events_per_s": 998.0,
            "seconds": 30.0,
            "stream_ms": {"p50": 5.0, "p99": 20.0},
            "stream_requests": 1500,
            "pending_readers": 8,
            "breakdown_ms": {
                "ingest": 8.0,
                "recompute": 20.0,
                "probes_split": 500,
                "fresh_jobs": 1500,
                "readers_per_job": 25.0,
                "pickup_p50": 10.0,
                "pickup_p99": 60.0,
                "run_p50": 12.0,
            },
            "plain_recommend_ms": {"p50": 4.0, "p99": 6.0},
            "gorse_check_ms": 60_000.0,
            "in_process_one_reader_ms": {"claim": 0.2, "score": 0.6, "write": 0.2},
        },
        "history_throughput_users_per_s": {
            "index_users_per_s": 7000.0,
            "no_delta_users_per_s": 6800.0,
            "history_users_per_s": 6300.0,
            "read_ms_per_batch": 9.0,
            "delta_books": 5,
            "batch": 500,
            "total_users_per_s": 12000.0,
            "users_per_cpu_s": 7000.0,
            "processes": 2,
            "cores": 1.7,
        },
        "fresh_worker_rss_mb": {
            "rss_before_mb": [790.0, 785.0],
            "rss_after_mb": [800.0, 790.0],
            "rss_while_sending_mb": [795.0, 800.0],
            "events": 1_000_000,
            "seconds": 120.0,
            "events_per_s": 8333.0,
            "jobs": 1200,
            "redis_growth_mb": 150.0,
        },
    }
    machine = {
        "date": "2026-11-28 05:00 UTC",
        "cores": 2,
        "cpu": "test cpu",
        "busy": True,
        "other_cores_during_run": 1.1,
        "other_cores_at_start": 0.9,
        "load_average": [3.0, 2.0, 1.0],
    }
    return Report(machine, figures, references, {"catalogue": TINY.describe(), "model": "mult-dae", "seconds": 312.4})


def test_targets_mark_misses_and_references() -> None:
    met = {key: value["met"] for key, value in _report().targets().items()}
    assert met["ceiling_users_per_s"] is None and met["seed_path_ms_per_user"] is None
    assert all(met[key] for key in met if key not in ("ceiling_users_per_s", "seed_path_ms_per_user"))

    missed = _report(latency_ms={"p50": 5.0, "p99": 31.0}, throughput_users_per_s=4000.0).targets()
    assert missed["latency_ms"]["met"] is False and missed["throughput_users_per_s"]["met"] is False
    assert missed["full_refresh_s"]["met"] is True


def test_a_ratings_figure_of_two_stores_misses_when_either_store_misses() -> None:
    slow_sqlite = {"postgres": {"p50": 8.0, "p99": 40.0}, "sqlite": {"p50": 6.0, "p99": 101.0}}
    missed = _report(
        ingest_latency_ms=slow_sqlite, snapshot_s={"postgres": 5.5, "sqlite": 1.0}, ingest_sqlite_events_per_s=19_999.0
    ).targets()
    assert missed["ingest_latency_ms"]["met"] is False and missed["snapshot_s"]["met"] is False
    assert missed["ingest_sqlite_events_per_s"]["met"] is False and missed["ingest_postgres_events_per_s"]["met"]
    assert _report(import_postgres_s=15.5).targets()["import_postgres_s"]["met"] is False


def test_a_fresh_figure_misses_when_either_of_its_bars_is_missed() -> None:
    assert all(_report().targets()[figure.key]["met"] for figure in FRESH)
    missed = _report(
        fresh_list_ms={"p50": 12.0, "p99": 51.0},
        history_throughput_users_per_s={"per_process": 6000.0, "of_index": 0.79},
        fresh_worker_rss_mb={"rss_mb": 800.0, "growth_pct": 10.5},
    ).targets()
    assert not any(missed[figure.key]["met"] for figure in FRESH)
    slow = {"per_process": 4999.0, "of_index": 0.95}
    assert _report(history_throughput_users_per_s=slow).targets()["history_throughput_users_per_s"]["met"] is False
    assert _report(fresh_list_ms={"p50": 16.0, "p99": 40.0}).targets()["fresh_list_ms"]["met"] is False


def test_throughput_below_half_the_ceiling_misses_even_above_5000() -> None:
    assert (
        _report(throughput_users_per_s=5500.0, ceiling_users_per_s=12000.0).targets()["throughput_users_per_s"]["met"]
        is False
    )


def test_markdown_names_date_cores_busy_machine_and_every_figure() -> None:
    text = markdown(_report())
    assert "2026-11-28" in text and "2 cores" in text and "busy" in text
    assert "| " + " | ".join(HEADERS) + " |" in text
    assert all(f"| {figure.key} |" in text for figure in FIGURES)
    assert "peak RSS (VmHWM, both versions held during the swap) 812 MB" in text


def columns_of(block: list[str], starts: list[int]) -> list[str]:
    """The text of each column across a row's lines, the columns starting at `starts`."""
    ends = [*starts[1:], None]
    return [" ".join(" ".join(line[a:b].strip() for line in block).split()) for a, b in zip(starts, ends)]


def test_the_plain_table_fits_100_columns_and_keeps_every_cell_whole() -> None:
    report = _report()
    rows = report.rows()
    assert max(len("  ".join(row)) for row in rows) > 2 * WIDTH, "the unwrapped rows would not fit"

    lines = text(report).splitlines()

    assert max(len(line) for line in lines) <= WIDTH == 100
    assert lines[0].startswith("2026-11-28 05:00 UTC, 2 cores, tiny: 300 users") and "312 s" in lines[0]
    header = next(i for i, line in enumerate(lines) if line.startswith("figure "))
    starts = [lines[header].index(name) for name in ("figure", "measured", "target", "met")]
    firsts = [i for i, line in enumerate(lines) if i > header + 1 and not line.startswith(" ")]
    firsts = [i for i in firsts if lines[i].split()[0] in {row[0] for row in rows}]
    assert [lines[i].split()[0] for i in firsts] == [row[0] for row in rows]
    for (key, measured, target, reference, met), first, after in zip(rows, firsts, [*firsts[1:], len(lines)]):
        block = lines[first:after]
        cut = next(j for j, line in enumerate(block) if line.startswith("  same run: "))
        assert columns_of(block[:cut], starts) == [key, measured, target, met]
        assert " ".join(" ".join(block[cut:]).split()) == f"same run: {' '.join(reference.split())}"


def test_bookrec_bench_prints_the_table_that_fits(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from bookrec.bench import harness
    from bookrec.cli import main

    monkeypatch.setattr(harness, "run", lambda config, notify: _report())

    assert main(["bench", "--quick", "--only", "ratings"]) == 0
    out = capsys.readouterr().out
    assert out == text(_report()) + "\n" and max(len(line) for line in out.splitlines()) <= 100


def test_bench_database_replaces_the_one_in_the_url() -> None:
    assert with_db("redis://:secret@redis.example:6380/0", 12) == "redis://:secret@redis.example:6380/12"
    assert with_db("redis://localhost:6379", 3) == "redis://localhost:6379/3"


@pytest.mark.integration
def test_claim_refuses_a_database_holding_other_keys_or_in_use(redis_client, tmp_path: Path) -> None:
    from bookrec.bench.service import Service
    from bookrec.shared.errors import BookrecError

    redis_client.set("someone:else", "1")
    with pytest.raises(BookrecError, match="not the benchmark's"):
        Service.claim(TEST_REDIS_URL, tmp_path, tmp_path)
    assert redis_client.get("someone:else") == b"1"

    redis_client.flushdb()
    first = Service.claim(TEST_REDIS_URL, tmp_path, tmp_path)  # marks the database with this (live) process
    redis_client.set("bench:recs:1", "{}")
    with pytest.raises(BookrecError, match="still running"):
        Service.claim(TEST_REDIS_URL, tmp_path, tmp_path)
    assert redis_client.get("bench:recs:1") == b"{}"
    first.release()
    assert redis_client.dbsize() == 0
