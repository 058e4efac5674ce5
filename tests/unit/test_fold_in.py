"""Fold-in evaluation (`evaluation.fold_in`): held-out readers, their ratings in time order, ranked from their history."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bookrec.shared.errors import ValidationError
from bookrec.worker.learn.data import IdMap, Interactions
from bookrec.worker.learn.evaluation import Popularity, evaluate_fold_in, split_fold_in
from bookrec.worker.learn.evaluation.fold_in import BY_ROW, BY_TIME, FoldInSplit
from bookrec.worker.learn.pipeline import measure_fold_in


def ratings(per_reader: int = 4, readers: int = 10, timestamps: bool = True) -> pd.DataFrame:
    """Reader r rates books r, r+1, ... in file order, with timestamps running backwards (the last row is the oldest)."""
    rows = [(f"u{r}", f"b{r + j}", 4.0, 1000.0 - 10 * r - j) for r in range(readers) for j in range(per_reader)]
    frame = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    return frame if timestamps else frame.drop(columns="timestamp")


# --- the split -------------------------------------------------------------------------------


def test_held_out_readers_are_wholly_out_of_train_and_their_last_ratings_by_time_are_the_target() -> None:
    frame = ratings()
    split = split_fold_in(frame, holdout_frac=0.2, target_frac=0.25, seed=0)

    held = set(split.history["user"])
    assert len(held) == 2 and not held & set(split.train["user"])
    assert len(split.train) + len(split.history) + len(split.target) == len(frame)
    assert split.ordered_by == BY_TIME
    for reader in held:
        # timestamps run backwards, so the reader's first book in the file is the newest: the one target
        assert split.target[split.target["user"] == reader]["item"].tolist() == [f"b{reader[1:]}"]
        history = split.history[split.history["user"] == reader]
        assert history["timestamp"].is_monotonic_increasing and len(history) == 3


def test_without_timestamps_the_target_is_each_readers_last_rows_in_file_order() -> None:
    split = split_fold_in(ratings(timestamps=False), seed=0)

    assert split.ordered_by == BY_ROW
    for reader in set(split.target["user"]):
        assert split.target[split.target["user"] == reader]["item"].tolist() == [f"b{int(reader[1:]) + 3}"]


def test_equal_timestamps_keep_file_order_and_target_counts_follow_the_per_user_rule() -> None:
    rows = [("a", f"b{j}", 3.0, 5.0) for j in range(8)] + [("b", "b0", 3.0, 1.0)]
    rows += [("c", "b2", 3.0, 2.0), ("c", "b1", 3.0, 1.0), ("d", "b0", 3.0, 1.0)]
    frame = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    splits = (split_fold_in(frame, holdout_frac=0.75, seed=seed) for seed in range(50))
    split = next(s for s in splits if set(s.train["user"]) == {"d"})  # a, b and c held out

    assert split.target[split.target["user"] == "a"]["item"].tolist() == ["b6", "b7"]  # floor(8 / 4 + 0.5) = 2
    assert "b" not in set(split.target["user"])  # one rating: no target
    assert split.target[split.target["user"] == "c"]["item"].tolist() == ["b2"]  # min(2 - 1, floor(1.0)) = 1, by time


@pytest.mark.parametrize("fractions", [(0.0, 0.25), (1.0, 0.25), (0.2, 0.0), (0.2, 1.0)])
def test_fractions_outside_zero_and_one_are_refused(fractions: tuple[float, float]) -> None:
    with pytest.raises(ValidationError, match="strictly between 0 and 1"):
        split_fold_in(ratings(), *fractions)


def test_a_split_holding_out_no_reader_is_refused() -> None:
    with pytest.raises(ValidationError, match="leaves no reader to train on or to hold out"):
        split_fold_in(ratings(readers=2), holdout_frac=0.2)


# --- the evaluation --------------------------------------------------------------------------


class Oracle:
    """Ranks each reader's target books first (and records what it was given)."""

    def __init__(self, targets: dict[int, list[int]]) -> None:
        self.targets, self.calls = targets, []

    def top_k_from_history(
        self, items: np.ndarray, rows: np.ndarray, ratings: np.ndarray, n_readers: int, k: int
    ) -> np.ndarray:
        self.calls.append((items.copy(), rows.copy(), ratings.copy(), n_readers))
        top = np.full((n_readers, k), -1, np.int32)
        for row in range(n_readers):
            found = self.targets.get(row, [])[:k]
            top[row, : len(found)] = found
        return top


def hand_split() -> tuple[FoldInSplit, IdMap]:
    """Readers r1 (history b0 b1 b9, target b2) and r2 (history b3, target b4 and b8); b8 and b9 are unknown."""
    columns = ["user", "item", "rating"]
    history = pd.DataFrame(
        [("r1", "b0", 4.0), ("r1", "b1", 2.5), ("r1", "b9", 4.0), ("r2", "b3", 1.0)], columns=columns
    )
    target = pd.DataFrame([("r1", "b2", 4.0), ("r2", "b4", 4.0), ("r2", "b8", 4.0)], columns=columns)
    train = pd.DataFrame([("t", f"b{i}", 4.0) for i in range(6)], columns=columns)
    return FoldInSplit(train, history, target, BY_ROW), IdMap.from_ids(train["item"])


def test_a_ranker_finding_every_known_target_scores_one_and_unknown_targets_count_against_recall() -> None:
    split, items = hand_split()
    oracle = Oracle({0: [2], 1: [4]})

    metrics = evaluate_fold_in(oracle, split, items, k=2)

    assert metrics["recall@2"] == pytest.approx((1.0 + 0.5) / 2)
    assert metrics["precision@2"] == pytest.approx((0.5 + 0.5) / 2)
    assert (metrics["readers"], metrics["history_rows"], metrics["unknown_target_rows"]) == (2, 3, 1)
    assert metrics["ordered_by"] == BY_ROW and metrics["empty_histories"] == 0
    ((given_items, given_rows, given_ratings, n_readers),) = oracle.calls
    assert n_readers == 2
    given = sorted(zip(given_rows.tolist(), given_items.tolist(), given_ratings.tolist()))
    assert given == [(0, 0, 4.0), (0, 1, 2.5), (1, 3, 1.0)]  # b9 is unknown


def test_readers_are_ranked_in_batches_with_rows_counted_from_each_batch() -> None:
    split, items = hand_split()
    oracle = Oracle({0: [2]})

    evaluate_fold_in(oracle, split, items, k=2, batch_size=1)

    assert [(rows.tolist(), items.tolist(), n) for items, rows, _, n in oracle.calls] == [
        ([0, 0], [0, 1], 1),
        ([0], [3], 1),
    ]


def test_popularity_ranks_the_most_rated_books_a_reader_has_not_read() -> None:
    train = Interactions(
        users=np.array([0, 1, 2, 0, 1, 0], np.int32),
        items=np.array([0, 0, 0, 1, 1, 2], np.int32),
        ratings=np.ones(6, np.float32),
        n_users=3,
        n_items=4,
    )
    top = Popularity(train).top_k_from_history(np.array([0, 2]), np.array([0, 1]), np.ones(2), n_readers=3, k=3)

    assert top.tolist() == [[1, 2, 3], [0, 1, 3], [0, 1, 2]]


def test_a_ranker_returning_the_wrong_shape_is_named() -> None:
    split, items = hand_split()

    class Short:
        def top_k_from_history(self, items, rows, ratings, n_readers, k):
            return np.zeros((n_readers, k - 1), np.int32)

    with pytest.raises(ValidationError, match=r"Short.top_k_from_history returned \(2, 1\), not \(2, 2\)"):
        evaluate_fold_in(Short(), split, items, k=2)


def test_no_target_or_a_bad_k_is_refused() -> None:
    split, items = hand_split()
    with pytest.raises(ValidationError, match="k and batch_size must be at least 1"):
        evaluate_fold_in(Oracle({}), split, items, k=0)
    empty = FoldInSplit(split.train, split.history, split.target.iloc[:0], BY_ROW)
    with pytest.raises(ValidationError, match="no held-out reader has a target"):
        evaluate_fold_in(Oracle({}), empty, items)


# --- the whole measurement -------------------------------------------------------------------


@pytest.mark.slow
def test_measure_fold_in_ranks_the_same_held_out_readers_with_the_model_and_the_baselines(trained) -> None:
    result = measure_fold_in(trained.data_dir / "ratings.csv", params={"steps": 60})

    readers = result["held_out_readers"]
    assert readers == round(300 * 0.2)
    for metrics in (result["metrics"], result["baselines"]["popularity"], result["baselines"]["bias"]):
        assert metrics["readers"] == readers and metrics["ordered_by"] == BY_ROW  # the synthetic file has no time
        assert 0.0 <= metrics["ndcg@10"] <= 1.0
    assert result["metrics"]["ndcg@10"] != result["baselines"]["popularity"]["ndcg@10"]


def test_measure_fold_in_refuses_a_kind_that_scores_by_user_index(trained) -> None:
    with pytest.raises(ValidationError, match="biased-mf scores by user index only"):
        measure_fold_in(trained.data_dir / "ratings.csv", kind="biased-mf")
