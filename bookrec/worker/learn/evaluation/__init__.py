"""Offline evaluation without TensorFlow: train/test splits, rating and ranking metrics, baselines, evaluate."""

from bookrec.worker.learn.evaluation.baselines import BiasBaseline, GlobalMean, Popularity, top_k_from_scores
from bookrec.worker.learn.evaluation.evaluate import Scorer, evaluate, evaluate_with_baselines
from bookrec.worker.learn.evaluation.metrics import ranking_metrics, rating_metrics
from bookrec.worker.learn.evaluation.splits import split_ratings

__all__ = [
    "BiasBaseline",
    "GlobalMean",
    "Popularity",
    "Scorer",
    "evaluate",
    "evaluate_with_baselines",
    "ranking_metrics",
    "rating_metrics",
    "split_ratings",
    "top_k_from_scores",
]
