"""`python -m bookrec.bench.quality`'s fold-in section: its table (every history-based kind, the default first)
and its 1.6x bar (the measurement is faked here;
`measure_fold_in` itself is tested in test_fold_in.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bookrec.bench import quality
from bookrec.worker.learn import pipeline


def metrics(ndcg: float) -> dict:
    return {
        "ndcg@10": ndcg,
        "recall@10": 0.1,
        "precision@10": 0.2,
        "map@10": 0.05,
        "coverage@10": 0.3,
        "readers": 121,
        "history_rows": 10_726,
        "empty_histories": 0,
        "unknown_target_rows": 91,
        "ordered_by": "timestamp",
    }


@pytest.mark.parametrize("model_ndcg, verdict", [(0.161, "PASS"), (0.159, "FAIL")])
def test_the_fold_in_bar_is_the_default_models_ndcg_at_least_1_6x_popularitys(
    monkeypatch: pytest.MonkeyPatch, model_ndcg: float, verdict: str
) -> None:
    result = {
        "model": "mult-dae",
        "metrics": metrics(model_ndcg),
        "baselines": {"popularity": metrics(0.1), "bias": metrics(0.05)},
        "seconds": 41.5,
        "train_rows": 80_000,
        "held_out_readers": 122,
    }
    ease = {**result, "model": "ease", "metrics": metrics(0.15), "seconds": 50.0}
    monkeypatch.setattr(pipeline, "measure_fold_in", lambda ratings, kind: result if kind == "mult-dae" else ease)

    lines, passed = quality.fold_in_section(Path("ratings.csv"))

    assert passed == (verdict == "PASS")
    assert lines[2].startswith("| `mult-dae` (default), `recommend_history` | ") and f"x {verdict} | 41.5 |" in lines[2]
    assert lines[3].startswith("| `ease`, `recommend_history` | 0.1500 |") and "| 1.50x | 50.0 |" in lines[3]
    assert lines[4].startswith("| `popularity` baseline | 0.1000 |") and "| 1.00x | - |" in lines[4]
    assert lines[5].startswith("| `bias` baseline | 0.0500 |") and "| 0.50x | - |" in lines[5]
    assert "122 readers held out (121 with a target), ratings ordered by timestamp" in lines[6]
