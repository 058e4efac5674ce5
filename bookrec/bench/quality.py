"""The quality bars, measured with `bookrec train` on a real ratings file and written as a markdown table.

    python -m bookrec.bench.quality [--ratings FILE] [--out bench/results/quality.md] [--only rating|ranking|fold-in|pruning]

Default file: MovieLens latest-small, read from ../shared/data (never copied into the project).
Rating bar: `--split random --test-frac 0.2 --seed 0`, biased-mf RMSE <= 0.865 and below its
`bias` baseline. Ranking bar: `--split per-user --test-frac 0.25 --seed 0`, the default model's
ndcg@10 >= 1.7x popularity's and its recall@10 above popularity's, trained in <= 180 s; `ease` the same
at >= 1.85x.
Fold-in bar: 20% of the readers held out entirely (seed 0), the default model trained on the rest
and fed each held-out reader's first 75% of ratings in time order through `recommend_history`: its
ndcg@10 on their last 25% >= 1.6x popularity's on the same readers (`pipeline.measure_fold_in`,
in this process), with every other history-based kind beside it. Pruning (a reference): `ease` with each
column of B cut to 100, 300 and 1,000 entries against dense B, at the l2 dense chose.
Exits 1 if a bar is missed, 2 if the data file is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

from bookrec.bench.catalogue import REPO
from bookrec.shared.payloads import MODEL_KINDS

MOVIELENS = REPO.parent / "shared" / "data" / "movielens" / "ml-latest-small" / "ratings.csv"
RATING_KINDS = ("biased-mf", "mf", "deep")
RANKING_KINDS = MODEL_KINDS  # every kind, the default first
RANKING_METRICS = ("ndcg@10", "recall@10", "precision@10", "map@10", "coverage@10")
FOLD_IN_BAR = 1.6
RANKING_BARS = {RANKING_KINDS[0]: 1.7, "ease": 1.85}
"""ndcg@10 / popularity's each kind must reach on the per-user split (the default kind, and `ease`)."""
PRUNE_KEEP = (100, 300, 1000)
"""Entries per column of B kept in the pruning table (B forced sparse with dense_max 1)."""
SURPRISE = "Surprise on a random 80/20 split of ml-latest-small: SVD 0.870, BaselineOnly 0.867"


def train(ratings: Path, kind: str, split: str, test_frac: float, store: Path, params: dict | None = None) -> dict:
    """Run `bookrec train --json` (with `--params` when given) in a subprocess and return its JSON."""
    env = {**os.environ, "BOOKREC_MODEL_STORE": str(store), "BOOKREC_TF_THREADS": "0"}
    command = [
        sys.executable,
        "-m",
        "bookrec.cli",
        "train",
        "--ratings",
        str(ratings),
        "--model",
        kind,
        "--split",
        split,
        "--test-frac",
        str(test_frac),
        "--seed",
        "0",
        "--json",
        *(("--params", json.dumps(params)) if params else ()),
    ]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bookrec train --model {kind} failed: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout)


def rating_section(ratings: Path, store: Path) -> tuple[list[str], bool]:
    """The rating table (random 80/20) and whether biased-mf met its bar."""
    lines = [
        "| model | RMSE | MAE | its `bias` baseline RMSE | `global_mean` RMSE | training s |",
        "|---|---|---|---|---|---|",
    ]
    passed = True
    for kind in RATING_KINDS:
        result = train(ratings, kind, "random", 0.2, store)
        m, b = result["metrics"], result["baselines"]
        verdict = ""
        if kind == "biased-mf":
            ok = m["rmse"] <= 0.865 and m["rmse"] < b["bias"]["rmse"]
            passed &= ok
            verdict = " (bar: <= 0.865 and below bias: " + ("PASS" if ok else "FAIL") + ")"
        lines.append(
            f"| `{kind}` | {m['rmse']:.4f}{verdict} | {m['mae']:.4f} | {b['bias']['rmse']:.4f} | {b['global_mean']['rmse']:.4f} | {result['seconds']} |"
        )
    lines.append(f"\nReference: {SURPRISE}.")
    return lines, passed


def ranking_section(ratings: Path, store: Path) -> tuple[list[str], bool]:
    """The ranking table (per-user 75/25) and whether the default model met its bar."""
    header = "| model | " + " | ".join(RANKING_METRICS) + " | ndcg@10 / popularity | training s |"
    lines = [header, "|---" * (len(RANKING_METRICS) + 3) + "|"]
    passed, popularity = True, None
    for kind in RANKING_KINDS:
        result = train(ratings, kind, "per-user", 0.25, store)
        m, popularity = result["metrics"], result["baselines"]["popularity"]
        ratio = m["ndcg@10"] / popularity["ndcg@10"]
        verdict = ""
        if kind in RANKING_BARS:
            ok = ratio >= RANKING_BARS[kind] and m["recall@10"] > popularity["recall@10"] and result["seconds"] <= 180
            passed &= ok
            verdict = " " + ("PASS" if ok else "FAIL")
        cells = " | ".join(f"{m[name]:.4f}" for name in RANKING_METRICS)
        lines.append(
            f"| `{kind}`{' (default)' if kind == RANKING_KINDS[0] else ''} | {cells} | {ratio:.2f}x{verdict} | {result['seconds']} |"
        )
    cells = " | ".join(f"{popularity[name]:.4f}" for name in RANKING_METRICS)
    lines.append(f"| `popularity` baseline | {cells} | 1.00x | - |")
    lines.append(
        "\nBars: the default model's ndcg@10 >= 1.7x popularity's and `ease`'s >= 1.85x, each with recall@10 above "
        "popularity's and training <= 180 s. "
        "Reference: popularity top-10 on a per-user 75/25 split of this file, NDCG@10 about 0.21 (data README)."
    )
    return lines, passed


def fold_in_section(ratings: Path) -> tuple[list[str], bool]:
    """The fold-in table (held-out readers ranked from their history by each history-based kind, the default
    first) and whether the default model met its bar."""
    from bookrec.worker.learn.models import get_spec
    from bookrec.worker.learn.pipeline import measure_fold_in  # TensorFlow only for this section

    results = [measure_fold_in(ratings, kind) for kind in RANKING_KINDS if get_spec(kind).history_based]
    result = results[0]
    m, popularity = result["metrics"], result["baselines"]["popularity"]["ndcg@10"]
    passed = m["ndcg@10"] >= FOLD_IN_BAR * popularity

    def row(name: str, metrics: dict, verdict: str, seconds: object) -> str:
        cells = " | ".join(f"{metrics[metric]:.4f}" for metric in RANKING_METRICS)
        return f"| {name} | {cells} | {metrics['ndcg@10'] / popularity:.2f}x{verdict} | {seconds} |"

    lines = [
        "| model | " + " | ".join(RANKING_METRICS) + " | ndcg@10 / popularity | training s |",
        "|---" * (len(RANKING_METRICS) + 3) + "|",
        row(
            f"`{result['model']}` (default), `recommend_history`", m, " PASS" if passed else " FAIL", result["seconds"]
        ),
        *(row(f"`{r['model']}`, `recommend_history`", r["metrics"], "", r["seconds"]) for r in results[1:]),
        *(row(f"`{name}` baseline", metrics, "", "-") for name, metrics in result["baselines"].items()),
        f"\n{result['held_out_readers']} readers held out ({m['readers']} with a target), ratings ordered by "
        f"{m['ordered_by']}; {m['history_rows']:,} history ratings fed, {m['unknown_target_rows']} target ratings "
        f"of books unknown to the model; trained on {result['train_rows']:,} ratings. "
        f"Bar: the default model's ndcg@10 >= {FOLD_IN_BAR}x popularity's on the same readers.",
    ]
    return lines, passed


def pruning_section(ratings: Path, store: Path) -> tuple[list[str], bool]:
    """What pruning B costs `ease` on the per-user split: dense, then each column cut to PRUNE_KEEP entries, at the
    l2 the dense run chose on validation. A reference table: no bar."""
    dense = train(ratings, "ease", "per-user", 0.25, store)
    l2 = json.loads((store / dense["version"] / "metadata.json").read_text())["params"]["l2"]
    popularity = dense["baselines"]["popularity"]["ndcg@10"]
    lines = [
        "| `ease` B | ndcg@10 | recall@10 | ndcg@10 / popularity | cost in ndcg@10 | training s |",
        "|---|---|---|---|---|---|",
    ]
    runs = [("dense", dense)] + [
        (
            f"pruned, {keep:,} per column",
            train(ratings, "ease", "per-user", 0.25, store, {"l2": l2, "keep": keep, "dense_max": 1}),
        )
        for keep in PRUNE_KEEP
    ]
    best = dense["metrics"]["ndcg@10"]
    for name, result in runs:
        m = result["metrics"]
        lines.append(
            f"| {name} | {m['ndcg@10']:.4f} | {m['recall@10']:.4f} | {m['ndcg@10'] / popularity:.2f}x | "
            f"{(m['ndcg@10'] - best) / best:+.1%} | {result['seconds']} |"
        )
    lines.append(f"\nl2 {l2:g} (chosen on validation by the dense run) for every row; pruned rows force dense_max 1.")
    return lines, True


TITLES = {
    "rating": "Rating prediction, `--split random --test-frac 0.2 --seed 0`",
    "ranking": "Top-10 ranking, `--split per-user --test-frac 0.25 --seed 0`",
    "fold-in": "Fold-in: 20% of readers held out, ranked from their first 75% of ratings (seed 0)",
    "pruning": "`ease` with B pruned, `--split per-user --test-frac 0.25 --seed 0`",
}


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections and write the markdown report."""
    parser = argparse.ArgumentParser(prog="python -m bookrec.bench.quality", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ratings",
        type=Path,
        default=MOVIELENS,
        help="ratings file (default: MovieLens latest-small from ../shared/data)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "bookrec" / "bench" / "results" / "quality.md",
        help="markdown report to write",
    )
    parser.add_argument("--only", choices=tuple(TITLES), help="run one section only")
    args = parser.parse_args(argv)
    if not args.ratings.exists():
        print(f"bookrec.bench.quality: {args.ratings} is absent; nothing measured", file=sys.stderr)
        return 2
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = [
        f"Measured {stamp} on {os.cpu_count()} cores with `python -m bookrec.bench.quality` on `{args.ratings.name}` "
        f"({args.ratings.parent.name}), seed 0.",
        "",
    ]
    passed = True
    with tempfile.TemporaryDirectory() as store:
        sections = {
            "rating": partial(rating_section, store=Path(store)),
            "ranking": partial(ranking_section, store=Path(store)),
            "fold-in": fold_in_section,
            "pruning": partial(pruning_section, store=Path(store)),
        }
        for name, section in sections.items():
            if args.only in (None, name):
                lines, ok = section(args.ratings)
                report += [f"#### {TITLES[name]}", "", *lines, ""]
                passed &= ok
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(report))
    print("\n".join(report))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
