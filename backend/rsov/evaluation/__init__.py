"""Evaluation harness: the numbers the papers report, on the standard benchmarks or your own labels.

``rsov eval semantic`` scores class maps against label rasters (per-class IoU, mIoU, pixel
accuracy, seen/unseen/harmonic mIoU); ``rsov eval instance`` scores instance masks against COCO
annotations (mask AP at IoU 0.5, Recall@100 at IoU 0.4/0.5/0.6, seen/unseen/harmonic).

Modules: ``metrics`` (the arithmetic), ``datasets`` (presets, image/label pairing, label maps,
COCO loading), ``options`` (method options and sweeps), ``runner`` (the loop over images, with an
on-disk cache), ``report`` (JSON, Markdown, PNG) and ``cli``.
"""
