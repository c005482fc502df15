"""Evaluation of learned representations: feature extraction, kNN, collapse diagnostics."""

from jef.evaluate.collapse import CollapseWarning, assignment_entropy, class_usage, effective_rank, embedding_std
from jef.evaluate.features import extract_features
from jef.evaluate.knn import knn_evaluate, knn_predict, knn_top1

__all__ = [
    "CollapseWarning",
    "assignment_entropy",
    "class_usage",
    "effective_rank",
    "embedding_std",
    "extract_features",
    "knn_evaluate",
    "knn_predict",
    "knn_top1",
]
