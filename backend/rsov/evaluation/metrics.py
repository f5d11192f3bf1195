"""The arithmetic of the scores, as the seeds define them.

Semantic (SegEarth-OV via mmseg, AerOSeg): one confusion matrix summed over the whole dataset;
per-class IoU = TP / (TP + FP + FN); classes absent from both labels and predictions have no IoU
and are left out of every mean; pixel accuracy = correct / labelled pixels; s-mIoU and u-mIoU are
the means over seen and unseen classes and h-mIoU their harmonic mean.

Instance (ZoRI, SCORE): pycocotools' COCOeval on masks, with 101-point interpolated AP at IoU 0.5
and recall of the top 100 detections per image at IoU 0.4, 0.5 and 0.6, per class, then averaged
over the classes that have ground truth (and over seen and unseen classes separately).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NO_CLASS = -1  # in a prediction index map: the pixel got no class (a miss); in a label map: ignored
RECALL_IOUS = (0.4, 0.5, 0.6)
AP_IOU = 0.5
MAX_DETECTIONS = 100


def confusion_matrix(label: np.ndarray, prediction: np.ndarray, n_classes: int) -> np.ndarray:
    """Pixel counts (K, K + 1): rows true class, columns predicted class, last column "no class".

    label (H, W) class indexes, NO_CLASS where ignored; prediction (H, W) class indexes, NO_CLASS
    where the pixel got no class (counted as a miss of its true class, a false positive of none).
    """
    if label.shape != prediction.shape:
        raise ValueError(f"label {label.shape} and prediction {prediction.shape} differ in shape")
    keep = label >= 0
    truth = label[keep].astype(np.int64)
    predicted = prediction[keep].astype(np.int64)
    predicted[predicted < 0] = n_classes
    counts = np.bincount(truth * (n_classes + 1) + predicted, minlength=n_classes * (n_classes + 1))
    return counts.reshape(n_classes, n_classes + 1)


def mean_defined(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are not None (None when there are none)."""
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def harmonic_mean(a: float | None, b: float | None) -> float | None:
    """2ab / (a + b), 0 when both are 0, None when either is missing."""
    if a is None or b is None:
        return None
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


@dataclass
class SplitScores:
    """A per-class score averaged over seen and unseen classes, and their harmonic mean."""

    seen: float | None
    unseen: float | None
    harmonic: float | None


def split_means(per_class: Sequence[float | None], unseen: Sequence[int]) -> SplitScores | None:
    """Seen/unseen means of a per-class score; None when no split is given."""
    if not unseen:
        return None
    hidden = set(unseen)
    seen_mean = mean_defined([v for k, v in enumerate(per_class) if k not in hidden])
    unseen_mean = mean_defined([v for k, v in enumerate(per_class) if k in hidden])
    return SplitScores(seen_mean, unseen_mean, harmonic_mean(seen_mean, unseen_mean))


@dataclass
class SemanticScores:
    """Scores from a summed confusion matrix; fractions in [0, 1]."""

    iou: list[float | None]  # per class; None where the class is in neither labels nor predictions
    miou: float | None
    pixel_accuracy: float | None  # None when no pixel is labelled
    split: SplitScores | None  # s-mIoU, u-mIoU, h-mIoU


def semantic_scores(confusion: np.ndarray, unseen: Sequence[int] = ()) -> SemanticScores:
    """confusion (K, K + 1) from ``confusion_matrix`` (summed over images) -> scores."""
    n = confusion.shape[0]
    tp = np.diag(confusion[:, :n]).astype(np.float64)
    label_total = confusion.sum(axis=1)
    predicted_total = confusion[:, :n].sum(axis=0)
    union = label_total + predicted_total - tp
    iou = [float(tp[k] / union[k]) if union[k] > 0 else None for k in range(n)]
    labelled = confusion.sum()
    accuracy = float(tp.sum() / labelled) if labelled else None
    return SemanticScores(iou, mean_defined(iou), accuracy, split_means(iou, unseen))


@dataclass
class InstanceScores:
    """Mask AP and recall per class (None where a class has no ground truth); fractions in [0, 1]."""

    ap50: list[float | None]
    recall: dict[float, list[float | None]]  # IoU threshold -> per-class Recall@100
    map50: float | None
    mean_recall: dict[float, float | None]
    ap_split: SplitScores | None  # seen/unseen/HM of AP50
    recall_split: SplitScores | None  # seen/unseen/HM of Recall@100 at IoU 0.5


def instance_scores(
    ground_truth: dict, detections: list[dict], image_ids: Sequence[int], n_classes: int, unseen: Sequence[int] = ()
) -> InstanceScores:
    """COCOeval ("segm") over ``image_ids``; categories are class indexes + 1.

    ground_truth: a COCO dataset dict (images, annotations, categories); detections: COCO result
    dicts (image_id, category_id, segmentation as RLE, score), at most ``MAX_DETECTIONS`` per image.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        if detections:
            dt = gt.loadRes(detections)
        else:  # loadRes cannot take an empty list
            dt = COCO()
            dt.dataset = {"images": ground_truth["images"], "categories": ground_truth["categories"], "annotations": []}
            dt.createIndex()
        evaluator = COCOeval(gt, dt, iouType="segm")
        evaluator.params.imgIds = list(image_ids)
        evaluator.params.catIds = list(range(1, n_classes + 1))
        evaluator.params.iouThrs = np.array(sorted({*RECALL_IOUS, AP_IOU}))
        evaluator.params.maxDets = [MAX_DETECTIONS]
        evaluator.params.areaRng = [[0, 1e10]]
        evaluator.params.areaRngLbl = ["all"]
        evaluator.evaluate()
        evaluator.accumulate()
    thresholds = list(evaluator.params.iouThrs)
    precision = evaluator.eval["precision"]  # (T, 101 recall points, K, areas, max dets), -1 = no ground truth
    recall_table = evaluator.eval["recall"]  # (T, K, areas, max dets)

    def at(iou: float) -> int:
        return int(np.argmin(np.abs(np.array(thresholds) - iou)))

    ap50: list[float | None] = []
    for k in range(n_classes):
        curve = precision[at(AP_IOU), :, k, 0, 0]
        ap50.append(None if (curve < 0).all() else float(curve[curve >= 0].mean()))
    recall = {
        iou: [
            None if recall_table[at(iou), k, 0, 0] < 0 else float(recall_table[at(iou), k, 0, 0])
            for k in range(n_classes)
        ]
        for iou in RECALL_IOUS
    }
    return InstanceScores(
        ap50=ap50,
        recall=recall,
        map50=mean_defined(ap50),
        mean_recall={iou: mean_defined(values) for iou, values in recall.items()},
        ap_split=split_means(ap50, unseen),
        recall_split=split_means(recall[AP_IOU], unseen),
    )
