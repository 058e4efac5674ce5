"""The benchmark's figures: each with its target, the reference measured beside it, and how it is shown.

A `Report` holds the numbers (`figures`, plus `references` measured in the same run) and
renders them as JSON, a plain table or a Markdown table.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable

Values = dict[str, Any]


@dataclass(frozen=True)
class Figure:
    """One row of the table: the JSON key, its target in words, and functions reading a report's numbers."""

    key: str
    target: str
    met: Callable[[Values, Values], bool | None]  # (figures, references) -> met? None: a reference, no target
    shown: Callable[[Any], str]
    reference: Callable[[Values], str]


def _n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


SERVING: tuple[Figure, ...] = (
    Figure(
        "throughput_users_per_s",
        ">= 5,000 users/s per process and >= 50% of ceiling",
        lambda f, r: (
            f["throughput_users_per_s"] >= 5000 and f["throughput_users_per_s"] >= 0.5 * f["ceiling_users_per_s"]
        ),
        lambda v: f"{_n(v)} users/s per process",
        lambda r: (
            f"{r['ratio_of_ceiling']:.0%} of ceiling ({r['cpu_ratio_of_ceiling']:.0%} per CPU-second); "
            f"{_n(r['total_users_per_s'])} users/s in all from {r['processes']} processes"
        ),
    ),
    Figure(
        "ceiling_users_per_s",
        "reference",
        lambda f, r: None,
        lambda v: f"{_n(v)} users/s",
        lambda r: (
            f"recommend signature alone {_n(r['graph_users_per_s'])} users/s; issue's 32-dim top-k: ~18,000 users/s"
        ),
    ),
    Figure(
        "latency_ms",
        "p50 <= 10 ms, p99 <= 30 ms",
        lambda f, r: f["latency_ms"]["p50"] <= 10 and f["latency_ms"]["p99"] <= 30,
        lambda v: f"p50 {_ms(v['p50'])} / p99 {_ms(v['p99'])} ms",
        lambda r: (
            f"medians of {r['runs']} runs; all {r['requests']} requests pooled: p50 {_ms(r['all_p50'])} / p99 "
            f"{_ms(r['all_p99'])} ms, max {_ms(r['max'])} ms, {r['lost']} lost; enqueue->generated_at p50 "
            f"{_ms(r['server_p50'])} / p99 {_ms(r['server_p99'])} ms; in-process {_ms(r['in_process_ms'])} ms"
        ),
    ),
    Figure(
        "full_refresh_s",
        "<= 15 s",
        lambda f, r: f["full_refresh_s"] <= 15,
        lambda v: f"{v:.1f} s",
        lambda r: f"{_n(r['users'])} users; at the 2-process ceiling: {r['ideal_s']:.1f} s",
    ),
    Figure(
        "cache_read_ms",
        "p50 <= 0.5 ms",
        lambda f, r: f["cache_read_ms"] <= 0.5,
        lambda v: f"p50 {_ms(v)} ms",
        lambda r: (
            f"Redis PING p50 {_ms(r['ping_p50_ms'])} ms; an entry of n 10: {_n(r['entry_bytes'])} bytes of JSON, "
            f"{_n(r['redis_bytes_per_entry'])} bytes in Redis (MEMORY USAGE)"
        ),
    ),
    Figure(
        "swap_s",
        "<= 2 s, 0 failed jobs, no request > 3x p99",
        lambda f, r: f["swap_s"]["seconds"] <= 2 and f["swap_s"]["failed_jobs"] == 0 and r["slowest_vs_p99"] <= 3,
        lambda v: f"{v['seconds']:.2f} s, {v['failed_jobs']} failed, slowest {_ms(v['slowest_ms'])} ms",
        lambda r: (
            f"slowest = {r['slowest_vs_p99']:.1f}x p99; in-process load {r['model_load_s']:.2f} s; "
            f"{r['stale_after_swap']} answers from the old version after the swap; the workers' peak RSS "
            f"(VmHWM, both versions held during the swap) {_n(r['peak_rss_mb'])} MB"
        ),
    ),
    Figure(
        "retrain_s",
        "<= 180 s",
        lambda f, r: f["retrain_s"] <= 180,
        lambda v: f"{v:.0f} s",
        lambda r: f"of which fitting {r['fit_s']:.0f} s ({r['kind']})",
    ),
    Figure(
        "worker_rss_mb",
        "<= 1,500 MB; growth <= 10%",
        lambda f, r: f["worker_rss_mb"]["rss_mb"] <= 1500 and f["worker_rss_mb"]["growth_pct"] <= 10,
        lambda v: f"{_n(v['rss_mb'])} MB, growth {v['growth_pct']:+.1f}%",
        lambda r: (
            f"growth over {_n(r['jobs'])} jobs from {_n(r['rss_before_mb'])} MB; loading the version in-process adds {_n(r['load_mb'])} MB"
        ),
    ),
    Figure(
        "scaling_2_vs_1",
        ">= 1.6",
        lambda f, r: f["scaling_2_vs_1"] >= 1.6,
        lambda v: f"{v:.2f}x",
        lambda r: (
            f"1 process {_n(r['one_process_users_per_s'])} users/s, 2 processes {_n(r['two_processes_users_per_s'])} "
            f"users/s; the workers got {r['one_process_cores']:.2f} and {r['two_processes_cores']:.2f} cores"
        ),
    ),
    Figure(
        "seed_path_ms_per_user",
        "reference",
        lambda f, r: None,
        lambda v: f"{_n(v, 1)} ms per user",
        lambda r: (
            f"ours in-process {r['service_ms_per_user']:.3f} ms/user: {_n(r['speedup'])}x faster; "
            f"same top-10 for {r['same_top_n']}/{r['users']} users"
        ),
    ),
)


def _per_store(value: Values, shown: Callable[[Any], str]) -> str:
    return f"PostgreSQL {shown(value['postgres'])}; SQLite {shown(value['sqlite'])}"


def _ingest_figure(store: str, name: str, bare: str, server: str = "") -> Figure:
    key = f"ingest_{store}_events_per_s"
    return Figure(
        key,
        ">= 20,000 events/s",
        lambda f, r: f[key] >= 20_000,
        lambda v: f"{_n(v)} events/s",
        lambda r: (
            f"{_n(r['events'])} events pre-loaded, one `bookrec ingest` ({name}, batches of {_n(r['batch'])}): "
            f"{_n(r['events_per_cpu_s'])} events per CPU-second of it{server}; raw XADD {_n(r['xadd_events_per_s'])} "
            f"events/s; {bare} of the same rows {_n(r['bare_rows_per_s'])} rows/s"
        ),
    )


RATINGS: tuple[Figure, ...] = (
    _ingest_figure("postgres", "PostgreSQL", "bare COPY", " and its PostgreSQL server process"),
    _ingest_figure("sqlite", "SQLite WAL", "bare executemany INSERT"),
    Figure(
        "ingest_latency_ms",
        "p50 <= 20 ms, p99 <= 100 ms at 2,000 events/s",
        lambda f, r: all(v["p50"] <= 20 and v["p99"] <= 100 for v in f["ingest_latency_ms"].values()),
        lambda v: _per_store(v, lambda x: f"p50 {_ms(x['p50'])} / p99 {_ms(x['p99'])} ms"),
        lambda r: (
            f"XADD -> committed, {_n(r['events'])} events per store at {_n(r['rate'])}/s (sent: PostgreSQL "
            f"{_n(r['sent_per_s']['postgres'])}/s, SQLite {_n(r['sent_per_s']['sqlite'])}/s); max PostgreSQL "
            f"{_ms(r['max_ms']['postgres'])} / SQLite {_ms(r['max_ms']['sqlite'])} ms; Redis PING p50 "
            f"{_ms(r['ping_p50_ms'])} ms, XADD p50 {_ms(r['xadd_p50_ms'])} ms"
        ),
    ),
    Figure(
        "import_postgres_s",
        "<= 15 s (1,000,000 ratings)",
        lambda f, r: f["import_postgres_s"] <= 15,
        lambda v: f"{v:.1f} s",
        lambda r: (
            f"`bookrec data import` of {_n(r['rows'])} ratings, wall ({r['command_s']:.1f} s by its JSON); psql \\copy "
            f"of the file: {r['psql_copy_s']:.1f} s bare, {r['psql_copy_keyed_s']:.1f} s keyed; into SQLite "
            f"{r['sqlite_s']:.1f} s"
        ),
    ),
    Figure(
        "snapshot_s",
        "<= 5 s (1,000,000 ratings)",
        lambda f, r: all(v <= 5 for v in f["snapshot_s"].values()),
        lambda v: _per_store(v, lambda x: f"{x:.2f} s"),
        lambda r: (
            f"snapshot().frame() of {_n(r['rows'])} ratings (snapshot alone: PostgreSQL "
            f"{r['snapshot_only_s']['postgres']:.2f} / SQLite {r['snapshot_only_s']['sqlite']:.2f} s); "
            f"pandas.read_csv of the file {r['read_csv_s']:.2f} s"
        ),
    ),
)


def _breakdown(r: Values) -> str:
    parts = r["breakdown_ms"]
    if parts["ingest"] is None:
        return "no probe's list was seen"
    one = r["in_process_one_reader_ms"]
    return (
        f"split (p50 of the probes): event -> in the reader's delta {_ms(parts['ingest'])}, -> list "
        f"{_ms(parts['recompute'])} ms; {_n(parts['fresh_jobs'])} fresh jobs of {parts['readers_per_job']:g} "
        f"readers (p50), pickup p50 {_ms(parts['pickup_p50'])} / p99 {_ms(parts['pickup_p99'])} ms, run p50 "
        f"{_ms(parts['run_p50'])} ms; in-process one reader: claim {_ms(one['claim'])}, scoring "
        f"{_ms(one['score'])}, cache write {_ms(one['write'])} ms"
    )


FRESH: tuple[Figure, ...] = (
    Figure(
        "fresh_list_ms",
        "p50 <= 15 ms, p99 <= 50 ms (2 workers, 1,000 events/s of other readers, a recommend stream)",
        lambda f, r: f["fresh_list_ms"]["p50"] <= 15 and f["fresh_list_ms"]["p99"] <= 50,
        lambda v: f"p50 {_ms(v['p50'])} / p99 {_ms(v['p99'])} ms",
        lambda r: (
            f"XADD -> the reader's list with ratings_through covering it, {_n(r['probes'])} readers at "
            f"{r['probe_rate']:g}/s (max {_ms(r['max_ms'])} ms; {_n(r['fresh_backlog_jobs'])} fresh jobs queued and "
            f"{_n(r['pending_readers'])} readers pending at the last) under {_n(r['other_events_per_s'])} events/s of others and {_n(r['stream_requests'])} "
            f"single-user recommends (p50 {_ms(r['stream_ms']['p50'])} / p99 {_ms(r['stream_ms']['p99'])} ms, "
            f"{_n(r['stream_lost'])} unanswered in 10 s); plain single-user recommend p50 {_ms(r['plain_recommend_ms']['p50'])} "
            f"/ p99 {_ms(r['plain_recommend_ms']['p99'])} ms; Gorse re-checks a list every {r['gorse_check_ms'] / 1000:.0f}"
            f" s; {_breakdown(r)}"
        ),
    ),
    Figure(
        "history_throughput_users_per_s",
        ">= 5,000 readers/s per process and >= 80% of the index path",
        lambda f, r: (
            f["history_throughput_users_per_s"]["per_process"] >= 5000
            and f["history_throughput_users_per_s"]["of_index"] >= 0.8
        ),
        lambda v: f"{_n(v['per_process'])} readers/s per process; {v['of_index']:.0%} of the index path",
        lambda r: (
            f"recommend jobs of {r['batch']} readers each with a delta ({r['delta_books']} rated, 1 removed) on "
            f"{r['processes']} processes: {_n(r['total_users_per_s'])}/s on {r['cores']:.2f} cores "
            f"({_n(r['users_per_cpu_s'])} per worker CPU-second); in process, one "
            f"TF thread, job path with the cache write: from current histories {_n(r['history_users_per_s'])}/s, "
            f"index path {_n(r['index_users_per_s'])}/s, histories without a delta {_n(r['no_delta_users_per_s'])}/s; "
            f"delta.read of {r['batch']} readers {_ms(r['read_ms_per_batch'])} ms"
        ),
    ),
    Figure(
        "fresh_worker_rss_mb",
        "growth <= 10% after 1,000,000 ingested ratings",
        lambda f, r: f["fresh_worker_rss_mb"]["growth_pct"] <= 10,
        lambda v: f"{_n(v['rss_mb'])} MB, growth {v['growth_pct']:+.1f}%",
        lambda r: (
            f"{_n(r['events'])} events through one `bookrec ingest` (SQLite) in {r['seconds']:.0f} s "
            f"({_n(r['events_per_s'])}/s) and {_n(r['jobs'])} worker jobs; from "
            f"{' / '.join(_n(x) for x in r['rss_before_mb'])} MB to {' / '.join(_n(x) for x in r['rss_after_mb'])} MB "
            f"(the larger while sending: {', '.join(_n(x) for x in r['rss_while_sending_mb'])} MB); "
            f"Redis grew {_n(r['redis_growth_mb'])} MB"
        ),
    ),
)

FIGURES: tuple[Figure, ...] = SERVING + RATINGS + FRESH
"""Every figure of a full run, in the order of the table."""


@dataclass
class Report:
    """Everything one benchmark run measured."""

    machine: Values
    figures: Values
    references: Values
    details: Values = field(default_factory=dict)

    def measured(self) -> list[Figure]:
        """The figures this run measured (a run of some phases has only theirs), in the order of the table."""
        return [fig for fig in FIGURES if fig.key in self.figures]

    def targets(self) -> Values:
        """{key: {"target": text, "met": True/False/None (a reference)}}."""
        return {
            fig.key: {"target": fig.target, "met": fig.met(self.figures, self.references[fig.key])}
            for fig in self.measured()
        }

    def what(self) -> str:
        """The catalogue, and the model when the serving phases ran."""
        model = self.details.get("model")
        return f"{self.details['catalogue']}" + (f", model {model}" if model else "")

    def to_json(self) -> Values:
        """The `--json` document: machine, figures, targets, plus references and what was done."""
        return {
            "machine": self.machine,
            "figures": self.figures,
            "targets": self.targets(),
            "references": self.references,
            "details": self.details,
        }

    def rows(self) -> list[list[str]]:
        """Table rows: figure, measured, target, reference from the same run, met."""
        targets = self.targets()
        return [
            [
                fig.key,
                fig.shown(self.figures[fig.key]),
                fig.target,
                fig.reference(self.references[fig.key]),
                {True: "yes", False: "NO", None: "-"}[targets[fig.key]["met"]],
            ]
            for fig in self.measured()
        ]


HEADERS = ("figure", "measured", "target", "reference (same run)", "met")
WIDTH = 100
"""The columns `text` fits in: a terminal of 100 columns."""


def text(report: Report, width: int = WIDTH) -> str:
    """The table for a terminal `width` columns wide, headed by the date, cores, catalogue and how busy the machine
    was: figure, measured, target and met wrapped in their columns, each figure's reference (measured in the same run)
    wrapped on the lines below it. `markdown` and `Report.to_json` give the same rows unwrapped."""
    m, d = report.machine, report.details
    head = [
        f"{m['date']}, {m['cores']} cores, {report.what()}, {d['seconds']:.0f} s",
        f"machine {'BUSY' if m['busy'] else 'quiet'}: other processes used {m['other_cores_during_run']:.2f} cores on "
        "average during the run; figures are medians over repeats; under each figure, the reference measured in the "
        "same run",
    ]
    rows = report.rows()
    figure_w = min(max(len(HEADERS[0]), *(len(row[0]) for row in rows)), 32)
    met_w = len(HEADERS[4])
    rest = width - figure_w - met_w - 6  # three gaps of two spaces
    columns = (figure_w, rest // 2, rest - rest // 2, met_w)
    lines = [line for part in head for line in textwrap.wrap(part, width, subsequent_indent="  ")]
    lines += ["", _cells((HEADERS[0], HEADERS[1], HEADERS[2], HEADERS[4]), columns)]
    lines.append(_cells(tuple("-" * w for w in columns), columns))
    for key, measured, target, reference, met in rows:
        lines.append(_cells((key, measured, target, met), columns))
        lines += textwrap.wrap(reference, width, initial_indent="  same run: ", subsequent_indent="    ")
    return "\n".join(lines)


def _cells(cells: tuple[str, ...], widths: tuple[int, ...]) -> str:
    """One row of wrapped cells, as many lines as its tallest cell needs."""
    wrapped = [textwrap.wrap(cell, w, break_on_hyphens=False) or [""] for cell, w in zip(cells, widths)]
    height = max(len(lines) for lines in wrapped)
    padded = [lines + [""] * (height - len(lines)) for lines in wrapped]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in zip(*padded))


def _only(details: Values) -> str:
    phases = details.get("phases", ())
    return f" --only {phases[0]}" if len(phases) == 1 else ""


def markdown(report: Report) -> str:
    """The table as Markdown, headed by the date, cores, catalogue and how busy the machine was."""
    m, d = report.machine, report.details
    lines = [
        f"`bookrec bench{' --quick' if d.get('quick') else ''}{_only(d)}` on {m['date']}: {m['cores']} cores ({m['cpu']}), "
        f"{report.what()}.",
        f"Machine {'busy' if m['busy'] else 'quiet'}: other processes used {m['other_cores_during_run']:.2f} cores on average "
        f"during the run ({m['other_cores_at_start']:.2f} at the start); load average at the end {m['load_average'][0]:.2f}.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join("---" for _ in HEADERS) + "|",
        *("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in report.rows()),
    ]
    return "\n".join(lines)
