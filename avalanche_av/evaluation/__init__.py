"""Evaluation for continual audio-video pre-training: zero-shot retrieval, A / F, modality gap, plots,
and efficiency meters (FLOPs, saved activations, step phases; :mod:`.efficiency`)."""

from avalanche_av.evaluation.efficiency import (
    EfficiencyMetric,
    EfficiencyPlugin,
    FlopMeter,
    PhaseMeter,
    SavedActivationMeter,
    memory_bytes_per_sample,
)
from avalanche_av.evaluation.functional import (
    average_accuracy,
    class_recall_at_k,
    forgetting,
    forgetting_paper,
    modality_gap,
    recall_at_k,
    similarity,
)
from avalanche_av.evaluation.localization import (
    avm_importance,
    avm_match_accuracy,
    importance_share,
    plot_attention_map,
)
from avalanche_av.evaluation.metrics import (
    RetrievalMetrics,
    av_evaluator,
    get_retrieval_metrics,
)
from avalanche_av.evaluation.plots import (
    plot_accuracy_matrix,
    plot_metric_curves,
    save_accuracy_matrix_png,
)

__all__ = [
    "similarity",
    "recall_at_k",
    "class_recall_at_k",
    "average_accuracy",
    "forgetting",
    "forgetting_paper",
    "modality_gap",
    "RetrievalMetrics",
    "av_evaluator",
    "get_retrieval_metrics",
    "plot_accuracy_matrix",
    "plot_metric_curves",
    "save_accuracy_matrix_png",
    "avm_importance",
    "avm_match_accuracy",
    "importance_share",
    "plot_attention_map",
    "EfficiencyPlugin",
    "EfficiencyMetric",
    "FlopMeter",
    "SavedActivationMeter",
    "PhaseMeter",
    "memory_bytes_per_sample",
]
