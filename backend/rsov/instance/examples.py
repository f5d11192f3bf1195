"""ZoRI's exemplar cache bank: the analyst's example objects, encoded where they lie and pooled in their masks.

The pixels around each example come from the caller (``view``), so nothing is read here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

import numpy as np
import torch

from ..errors import InputError
from ..semantic.predictor import FeatureOptions, Predictor
from ..semantic.vocabulary import Vocabulary
from .classify import pooled_features
from .types import Example, ExampleBank, InstanceOptions, Mask

# example -> the image around it (h, w, 3) uint8, its pixel size in metres, and the example's mask on it
ExampleView = Callable[[Example], tuple[np.ndarray, float, Mask]]


def encode_examples(
    predictor: Predictor,
    examples: Iterable[Example],
    vocabulary: Vocabulary,
    view: ExampleView,
    features: FeatureOptions,
    resolution_m: float,
) -> ExampleBank:
    """The bank of ``examples``: each is encoded on its ``view`` at the job's ground resolution
    ``resolution_m`` and its features pooled in its mask; its class must be one of the vocabulary's."""
    names = [n.lower() for n in vocabulary.names]
    keys, labels = [], []
    for example in examples:
        if example.class_name.lower() not in names:
            raise InputError(
                f"Example class '{example.class_name}' is not in the vocabulary ({', '.join(vocabulary.names)})."
            )
        image, pixel_size_m, mask = view(example)
        predictor.set_image(image, replace(features, resolution_m=resolution_m), pixel_size_m)
        keys.append(pooled_features(predictor, [mask], image.shape[:2], InstanceOptions())[0])
        labels.append(names.index(example.class_name.lower()) + 1)
    return ExampleBank(torch.stack(keys), torch.tensor(labels))
