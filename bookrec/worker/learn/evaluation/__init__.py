"""Offline evaluation without TensorFlow: train/test splits, rating and ranking metrics, baselines, evaluate."""

from bookrec.worker.learn.evaluation.baselines import BiasBaseline, GlobalMean, Popularity, top_k_from_scores
from bookrec.worker.learn.evaluation.evaluate import Scorer, evaluate, evaluate_with_baselines
from bookrec.worker.learn.evaluation.fold_in import HistoryRanker, evaluate_fold_in, split_fold_in
from bookrec.worker.learn.evaluation.metrics import ranking_metrics, rating_metrics
from bookrec.worker.learn.evaluation.splits import split_ratings

__all__ = [
    "BiasBaseline",
    "GlobalMean",
    "HistoryRanker",
    "Popularity",
    "Scorer",
    "evaluate",
    "evaluate_fold_in",
    "evaluate_with_baselines",
    "ranking_metrics",
    "rating_metrics",
    "split_fold_in",
    "split_ratings",
    "top_k_from_scores",
]
