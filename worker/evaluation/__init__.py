"""Offline evaluation without TensorFlow: train/test splits, rating and ranking metrics, baselines, evaluate."""

from worker.evaluation.baselines import BiasBaseline, GlobalMean, Popularity, top_k_from_scores
from worker.evaluation.evaluate import Scorer, evaluate, evaluate_with_baselines
from worker.evaluation.metrics import ranking_metrics, rating_metrics
from worker.evaluation.splits import split_ratings

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
