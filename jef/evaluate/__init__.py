"""Evaluation of learned representations: offline protocols (kNN, linear probe, fine-tuning), feature
extraction and collapse diagnostics."""

from jef.evaluate.collapse import (
    CollapseWarning,
    alignment,
    assignment_entropy,
    class_usage,
    effective_rank,
    embedding_std,
    uniformity,
)
from jef.evaluate.features import extract_features
from jef.evaluate.finetune import FinetuneResult, finetune
from jef.evaluate.knn import knn_accuracy, knn_evaluate, knn_predict, knn_scores, knn_top1
from jef.evaluate.linear import LinearProbeResult, linear_probe, topk_accuracy
from jef.evaluate.online import OnlineLinearProbe
from jef.evaluate.protocols import (
    EVALUATION_NAME,
    PROTOCOLS,
    Result,
    evaluate_backbone,
    read_evaluation,
    require_labels,
    write_evaluation,
)

__all__ = [
    "EVALUATION_NAME",
    "PROTOCOLS",
    "CollapseWarning",
    "FinetuneResult",
    "LinearProbeResult",
    "OnlineLinearProbe",
    "Result",
    "alignment",
    "assignment_entropy",
    "class_usage",
    "effective_rank",
    "embedding_std",
    "evaluate_backbone",
    "extract_features",
    "finetune",
    "knn_accuracy",
    "knn_evaluate",
    "knn_predict",
    "knn_scores",
    "knn_top1",
    "linear_probe",
    "read_evaluation",
    "require_labels",
    "topk_accuracy",
    "uniformity",
    "write_evaluation",
]
