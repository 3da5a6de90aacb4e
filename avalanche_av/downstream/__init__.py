"""Downstream evaluation of a (continually) pre-trained backbone (paper Table 4 and Table 8).

Four tasks, each on frozen features except retrieval fine-tuning (``docs/downstream.md``):

* :func:`run_classification`: linear / MLP head on clip features; top-1/top-5, mAP;
* :func:`run_event_localization`: per-segment classes + background; segment accuracy;
* :func:`run_segmentation`: light decoder on multi-level video tokens; mIoU, F-score;
* :func:`run_retrieval_finetune`: continued self-supervised training, then A<->V R@1/5/10.

:func:`run_downstream` (the ``avalanche-av downstream`` command) ties data, backbone loading
(:func:`load_backbone`: run checkpoints, official CAV-MAE weights, ImageNet-MAE init, random),
the feature cache (:class:`FeatureExtractor`) and the results files together.
"""
from .backbone import BackboneInfo, CheckpointSource, build_backbone, load_backbone, open_checkpoint
from .classify import CLASSIFY_FEATURES, run_classification
from .data import (
    DownstreamData,
    TensorMaskSource,
    audioset_data,
    ave_data,
    avsbench_s4_data,
    build_data,
    carve_validation,
    msrvtt_data,
    synthetic_data,
    vggsound_data,
)
from .event import run_event_localization
from .features import FeatureExtractor, default_levels, segment_pool
from .heads import FitResult, SegmentationDecoder, Standardize, bce_dice_loss, dice_loss, fit_head, make_head
from .metrics import (
    average_precision,
    confusion_matrix,
    f_score,
    mask_iou,
    mean_average_precision,
    mean_iou,
    segment_accuracy,
    topk_accuracy,
)
from .retrieval import retrieval_scores, run_retrieval_finetune, ssl_train
from .runner import TASKS, DownstreamConfig, run_downstream
from .segment import run_segmentation

__all__ = [
    "BackboneInfo",
    "CheckpointSource",
    "CLASSIFY_FEATURES",
    "DownstreamConfig",
    "DownstreamData",
    "FeatureExtractor",
    "FitResult",
    "SegmentationDecoder",
    "Standardize",
    "TASKS",
    "TensorMaskSource",
    "audioset_data",
    "ave_data",
    "average_precision",
    "avsbench_s4_data",
    "bce_dice_loss",
    "build_backbone",
    "build_data",
    "carve_validation",
    "confusion_matrix",
    "default_levels",
    "dice_loss",
    "f_score",
    "fit_head",
    "load_backbone",
    "make_head",
    "mask_iou",
    "mean_average_precision",
    "mean_iou",
    "msrvtt_data",
    "open_checkpoint",
    "retrieval_scores",
    "run_classification",
    "run_downstream",
    "run_event_localization",
    "run_retrieval_finetune",
    "run_segmentation",
    "segment_accuracy",
    "segment_pool",
    "ssl_train",
    "synthetic_data",
    "topk_accuracy",
    "vggsound_data",
]
