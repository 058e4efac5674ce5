"""The exported SavedModel serves what the Keras model computes, and plain TensorFlow can load it.

Each kind is trained for two epochs on the tiny catalogue, exported with `ServingModule`, and
loaded in a separate interpreter that imports only tensorflow and numpy. Its `predict`,
`top_k` and `recommend` signatures must agree with the in-memory Keras model within 1e-5; so must
`recommend_history`, which exactly the history-based kinds have, fed each of USERS' training books
(plus an empty reader) instead of their user index.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from bookrec.worker.learn import export, training
from bookrec.worker.learn.data import Interactions
from bookrec.worker.learn.datasets import read_ratings
from bookrec.worker.learn.models import DEFAULT_KIND, get_spec
from bookrec.worker.learn.pipeline import TrainRequest, make_split

pytestmark = pytest.mark.slow

KINDS = tuple(dict.fromkeys(("mf", "biased-mf", "deep", "ease", DEFAULT_KIND)))
USERS = np.arange(6, dtype=np.int32)
K = 10
TOLERANCE = 1e-5
_rng = np.random.default_rng(0)
PAIRS = (
    _rng.integers(0, len(USERS), 40).astype(np.int32),
    _rng.integers(0, 150, 40).astype(np.int32),
)  # (row in USERS, book)
EXCLUDED = (
    np.repeat(np.arange(len(USERS), dtype=np.int32), 5),
    np.tile(np.arange(5, dtype=np.int32), len(USERS)),
)  # (row, book)

PLAIN_TENSORFLOW = """
import sys
import numpy as np
import tensorflow as tf

root = sys.argv[1]
inputs = np.load(root + "/inputs.npz")
for kind in sys.argv[2:]:
    model = tf.saved_model.load(root + "/" + kind)
    sig = model.signatures
    predicted = sig["predict"](user=tf.constant(inputs["pair_users"]), item=tf.constant(inputs["pair_items"]))
    top = sig["top_k"](user=tf.constant(inputs["users"]), k=tf.constant(inputs["k"]))
    rec = sig["recommend"](user=tf.constant(inputs["users"]), k=tf.constant(inputs["k"]),
                           exclude_row=tf.constant(inputs["exclude_row"]), exclude_item=tf.constant(inputs["exclude_item"]))
    out = dict(rating=predicted["rating"].numpy(), top_items=top["items"].numpy(), top_scores=top["scores"].numpy(),
               rec_items=rec["items"].numpy(), rec_scores=rec["scores"].numpy(), has_history="recommend_history" in sig)
    if "recommend_history" in sig:
        hist = sig["recommend_history"](history_item=tf.constant(inputs["history_item"]),
                                        history_row=tf.constant(inputs["history_row"]),
                                        history_rating=tf.constant(inputs["history_rating"]),
                                        n_readers=tf.constant(inputs["n_readers"]), k=tf.constant(inputs["all_k"]))
        out.update(hist_items=hist["items"].numpy(), hist_scores=hist["scores"].numpy())
    np.savez(root + "/" + kind + ".out.npz", **out)
print(sorted({name.split(".")[0] for name in sys.modules} & {"worker", "shared", "model_store", "producer"}))
"""


@dataclass(frozen=True)
class RoundTrip:
    """For one kind: the Keras model's scores of every book for USERS (and, for history kinds, for an empty
    reader), each of USERS' training books, and what plain TF returned."""

    keras_scores: np.ndarray  # [len(USERS), n_items]
    empty_reader_scores: np.ndarray | None  # [n_items], history-based kinds only
    own_books: list[np.ndarray]  # per user of USERS
    served: dict[str, np.ndarray]


def keras_scores(model, kind: str, train: Interactions) -> np.ndarray:
    """The in-memory Keras model's score of every book for each of USERS."""
    spec = get_spec(kind)
    if spec.feed in ("histories", "closed-form"):  # scores from the user's row of rated books (or of their stars)
        rows = np.zeros((len(USERS), train.n_items), np.float32)
        row, items, ratings = train.by_user().rated_rows(USERS)
        rows[row, items] = ratings if spec.params().get("weighting") == "rating" else 1.0
        return np.asarray(model(rows, training=False))
    users = np.repeat(USERS, train.n_items)
    items = np.tile(np.arange(train.n_items, dtype=np.int32), len(USERS))
    return np.asarray(model({"user": users, "item": items})).reshape(len(USERS), train.n_items)


@pytest.fixture(scope="module")
def round_trips(trained, tmp_path_factory) -> dict[str, RoundTrip]:
    root = tmp_path_factory.mktemp("serving")
    split = make_split(
        TrainRequest(ratings=trained.data_dir / "ratings.csv"), read_ratings(trained.data_dir / "ratings.csv"), None
    )
    scores, empty = {}, {}
    for kind in KINDS:
        spec = get_spec(kind)
        fitted = training.fit(spec, split.train, spec.params(None if spec.solve else {"epochs": 2}), seed=0)
        export.save(export.serving_module(fitted.weights, history=fitted.history_weights), root / kind)
        scores[kind] = keras_scores(fitted.model, kind, split.train)
        if spec.history_based:
            empty[kind] = np.asarray(fitted.model(np.zeros((1, split.train.n_items), np.float32), training=False))[0]
    own_books = [split.train.by_user().items_of(user) for user in USERS]
    history_row, history_item, history_rating = split.train.by_user().rated_rows(USERS)
    np.savez(
        root / "inputs.npz",
        users=USERS,
        k=np.int32(K),
        exclude_row=EXCLUDED[0],
        exclude_item=EXCLUDED[1],
        pair_users=USERS[PAIRS[0]],
        pair_items=PAIRS[1],
        # USERS' training books and ratings, the first pair repeated at a lower rating (counted once, at the
        # larger), and an empty reader as the last row
        history_item=np.append(history_item, history_item[0]).astype(np.int32),
        history_row=np.append(history_row, history_row[0]).astype(np.int32),
        history_rating=np.append(history_rating, history_rating[0] - 1.0).astype(np.float32),
        n_readers=np.int32(len(USERS) + 1),
        all_k=np.int32(split.train.n_items),
    )
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_TENSORFLOW, str(root), *KINDS], cwd=root, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", "loading the SavedModel imported bookrec code"
    return {
        kind: RoundTrip(scores[kind], empty.get(kind), own_books, dict(np.load(root / f"{kind}.out.npz")))
        for kind in KINDS
    }


@pytest.mark.parametrize("kind", KINDS)
def test_predict_matches_the_keras_model(round_trips: dict[str, RoundTrip], kind: str) -> None:
    trip = round_trips[kind]

    np.testing.assert_allclose(trip.served["rating"], trip.keras_scores[PAIRS], rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("kind", KINDS)
def test_top_k_returns_the_best_books_of_the_catalogue(round_trips: dict[str, RoundTrip], kind: str) -> None:
    trip = round_trips[kind]
    best_first = -np.sort(-trip.keras_scores, axis=1)[:, :K]

    np.testing.assert_allclose(trip.served["top_scores"], best_first, rtol=0, atol=TOLERANCE)
    picked = np.take_along_axis(trip.keras_scores, trip.served["top_items"], axis=1)
    np.testing.assert_allclose(picked, trip.served["top_scores"], rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("kind", KINDS)
def test_recommend_masks_excluded_books_before_top_k(round_trips: dict[str, RoundTrip], kind: str) -> None:
    trip = round_trips[kind]
    masked = trip.keras_scores.copy()
    masked[EXCLUDED] = -np.inf

    assert not np.isin(trip.served["rec_items"], EXCLUDED[1]).any()
    np.testing.assert_allclose(trip.served["rec_scores"], -np.sort(-masked, axis=1)[:, :K], rtol=0, atol=TOLERANCE)
    picked = np.take_along_axis(trip.keras_scores, trip.served["rec_items"], axis=1)
    np.testing.assert_allclose(picked, trip.served["rec_scores"], rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("kind", KINDS)
def test_exactly_the_history_based_kinds_have_the_history_signature(
    round_trips: dict[str, RoundTrip], kind: str
) -> None:
    assert bool(round_trips[kind].served["has_history"]) == get_spec(kind).history_based


def test_the_default_kind_is_history_based_and_the_rating_kinds_are_not() -> None:
    assert get_spec(DEFAULT_KIND).history_based and get_spec("ease").history_based
    assert not any(get_spec(kind).history_based for kind in ("mf", "biased-mf", "deep", "softmax-mf"))


def history_kinds() -> list[str]:
    return [kind for kind in KINDS if get_spec(kind).history_based]


@pytest.mark.parametrize("kind", history_kinds())
def test_recommend_history_on_a_training_readers_books_gives_their_training_time_scores(
    round_trips: dict[str, RoundTrip], kind: str
) -> None:
    trip = round_trips[kind]
    items, scores = trip.served["hist_items"][: len(USERS)], trip.served["hist_scores"][: len(USERS)]

    for row, own in enumerate(trip.own_books):
        finite = np.isfinite(scores[row])
        assert not np.isin(items[row][finite], own).any(), "a reader's own book was recommended"
        assert finite.sum() == trip.keras_scores.shape[1] - len(own), "an unread book was masked"
        expected = trip.keras_scores[row][items[row][finite]]
        np.testing.assert_allclose(scores[row][finite], expected, rtol=0, atol=TOLERANCE)
        assert np.all(np.diff(scores[row][finite]) <= 0), "not best first"


@pytest.mark.parametrize("kind", history_kinds())
def test_recommend_history_scores_an_empty_history_as_the_model_scores_an_empty_row(
    round_trips: dict[str, RoundTrip], kind: str
) -> None:
    trip = round_trips[kind]
    items, scores = trip.served["hist_items"][-1], trip.served["hist_scores"][-1]

    assert np.isfinite(scores).all(), "an empty history masks nothing"
    np.testing.assert_allclose(scores, trip.empty_reader_scores[items], rtol=0, atol=TOLERANCE)
