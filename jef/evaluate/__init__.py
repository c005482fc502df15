"""Evaluation of learned representations: offline protocols (kNN, linear probe, fine-tuning; zero-shot and
retrieval for a model with a text encoder), feature extraction and collapse diagnostics."""

from jef.evaluate.collapse import (
    CollapseWarning,
    alignment,
    assignment_entropy,
    class_usage,
    effective_rank,
    embedding_std,
    uniformity,
)
from jef.evaluate.crossmodal import (
    DEFAULT_TEMPLATES,
    prompts,
    retrieval_recall,
    zero_shot_accuracy,
    zero_shot_weights,
)
from jef.evaluate.features import extract_feature_sets, extract_features, probe_features
from jef.evaluate.finetune import FinetuneResult, finetune, finetune_optimizer, finetune_param_groups
from jef.evaluate.knn import knn_accuracy, knn_evaluate, knn_predict, knn_scores, knn_top1
from jef.evaluate.linear import LinearProbeResult, linear_probe, topk_accuracy
from jef.evaluate.multimodal import evaluate_towers, text_tower
from jef.evaluate.online import OnlineLinearProbe
from jef.evaluate.protocols import (
    EVALUATION_NAME,
    PROTOCOLS,
    Result,
    check_backbone,
    evaluate_backbone,
    read_evaluation,
    require_labels,
    write_evaluation,
)

__all__ = [
    "DEFAULT_TEMPLATES",
    "EVALUATION_NAME",
    "PROTOCOLS",
    "CollapseWarning",
    "FinetuneResult",
    "LinearProbeResult",
    "OnlineLinearProbe",
    "Result",
    "alignment",
    "assignment_entropy",
    "check_backbone",
    "class_usage",
    "effective_rank",
    "embedding_std",
    "evaluate_backbone",
    "evaluate_towers",
    "extract_feature_sets",
    "extract_features",
    "finetune",
    "finetune_optimizer",
    "finetune_param_groups",
    "knn_accuracy",
    "knn_evaluate",
    "knn_predict",
    "knn_scores",
    "knn_top1",
    "linear_probe",
    "probe_features",
    "prompts",
    "read_evaluation",
    "require_labels",
    "retrieval_recall",
    "text_tower",
    "topk_accuracy",
    "uniformity",
    "write_evaluation",
    "zero_shot_accuracy",
    "zero_shot_weights",
]
