"""Datasets: presets of the seeds' benchmarks, image/label pairing, label maps and COCO annotations.

A class file (one class per line, synonyms comma-separated) gives class indexes by line order.
Raw label values become class indexes through a label map (``"1:0,2:1"`` or ``"1:building"``;
``"0:ignore"`` drops a value), or one-to-one when there is none; the ignore index is never scored.
The engine's class map uses 0 for "none of these" and k for the k-th class, so a prediction k is
class k - 1 and 0 goes to the dataset's background class when it names one, else it is a miss.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from ..errors import InputError
from ..semantic.vocabulary import ClassSpec, build_vocabulary, read_classes_file
from .metrics import NO_CLASS

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".jp2", ".vrt")
IGNORE_WORD = "ignore"


@dataclass(frozen=True)
class DatasetPreset:
    """How a benchmark is scored, as its paper did (SegEarth-OV configs; ZoRI/SCORE class lists)."""

    title: str
    task: str  # "semantic" or "instance"
    classes_file: str  # in rsov/presets/
    label_map: str | None = None  # raw value (or COCO category id) -> class, as typed on the command line
    ignore_index: int | None = 255
    threshold: float | None = None  # SegEarth-OV's per-dataset probability threshold
    background_class: str | None = None  # class that takes pixels under the threshold (SegEarth-OV's bg_idx)
    label_suffix: str = ""  # label file stem = image stem + this
    unseen: tuple[str, ...] = ()  # zero-shot split of the seeds, by class name


# Semantic label conventions are those of the mmseg-converted datasets SegEarth-OV evaluates on
# (LoveDA, Potsdam, Vaihingen: 0 is no-data/boundary and 1..K the classes; the others 0..K-1, 255 ignored).
PRESETS: dict[str, DatasetPreset] = {
    "openearthmap": DatasetPreset(
        "OpenEarthMap", "semantic", "openearthmap.txt", threshold=0.1, background_class="background"
    ),
    "loveda": DatasetPreset(
        "LoveDA",
        "semantic",
        "loveda.txt",
        "1:0,2:1,3:2,4:3,5:4,6:5,7:6",
        ignore_index=0,
        threshold=0.3,
        background_class="background",
    ),
    "isaid": DatasetPreset(
        "iSAID",
        "semantic",
        "isaid.txt",
        threshold=0.4,
        background_class="background",
        label_suffix="_instance_color_RGB",
    ),
    "potsdam": DatasetPreset(
        "Potsdam",
        "semantic",
        "potsdam.txt",
        "1:0,2:1,3:2,4:3,5:4,6:5",
        ignore_index=0,
        threshold=0.1,
        background_class="clutter",
    ),
    "vaihingen": DatasetPreset(
        "Vaihingen",
        "semantic",
        "vaihingen.txt",
        "1:0,2:1,3:2,4:3,5:4,6:5",
        ignore_index=0,
        threshold=0.1,
        background_class="clutter",
    ),
    "uavid": DatasetPreset("UAVid", "semantic", "uavid.txt", threshold=0.3, background_class="background"),
    "udd5": DatasetPreset("UDD5", "semantic", "udd5.txt", threshold=0.4, background_class="background"),
    "vdd": DatasetPreset("VDD", "semantic", "vdd.txt", threshold=0.3, background_class="background"),
    "nwpu-vhr-10": DatasetPreset(
        "NWPU-VHR-10", "instance", "nwpu-vhr-10.txt", unseen=("ship", "basketball court", "harbor")
    ),
    "isaid-instance": DatasetPreset(
        "iSAID (instances)",
        "instance",
        "isaid-instance.txt",
        unseen=("tennis court", "helicopter", "swimming pool", "soccer ball field"),
    ),
    "sior": DatasetPreset("SIOR", "instance", "sior.txt"),
    "fast": DatasetPreset("FAST", "instance", "fast.txt"),
    "sota": DatasetPreset("SOTA", "instance", "sota.txt"),
}


def get_preset(name: str, task: str) -> DatasetPreset:
    """The preset called ``name`` for ``task``; an unknown name or a preset of the other task is an input error."""
    preset = PRESETS.get(name.lower())
    if preset is None or preset.task != task:
        known = ", ".join(n for n, p in PRESETS.items() if p.task == task)
        raise InputError(f"Unknown {task} dataset preset '{name}': choose one of {known}.")
    return preset


def load_classes(path: str | Path) -> tuple[ClassSpec, ...]:
    """The classes of a class file, validated like a vocabulary (unique names, at least one)."""
    return build_vocabulary(read_classes_file(path), background=()).classes


def preset_classes_path(preset: DatasetPreset) -> Path:
    return PRESET_DIR / preset.classes_file


def class_index(name: str, classes: tuple[ClassSpec, ...]) -> int:
    """Index of the class whose name is ``name`` (case-insensitive)."""
    names = [c.name.lower() for c in classes]
    if name.strip().lower() not in names:
        raise InputError(
            f"'{name}' is not a class of the classes file (its classes: {', '.join(c.name for c in classes)})."
        )
    return names.index(name.strip().lower())


def parse_label_map(text: str, classes: tuple[ClassSpec, ...]) -> dict[int, int | None]:
    """``"1:0,2:building,0:ignore"`` -> {1: 0, 2: <index of building>, 0: None}; None means ignored."""
    mapping: dict[int, int | None] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        raw, sep, target = item.partition(":")
        try:
            value = int(raw)
        except ValueError:
            value = None
        if not sep or value is None or not target.strip():
            raise InputError(f"Label map entry '{item}' is not RAW:CLASS, e.g. '1:0' or '1:building' or '0:ignore'.")
        target = target.strip()
        if target.lower() == IGNORE_WORD:
            mapping[value] = None
        elif target.lstrip("-").isdigit():
            index = int(target)
            if not 0 <= index < len(classes):
                raise InputError(f"Label map entry '{item}': class index {index} is outside 0..{len(classes) - 1}.")
            mapping[value] = index
        else:
            mapping[value] = class_index(target, classes)
    if not mapping:
        raise InputError("The label map is empty: give RAW:CLASS pairs separated by commas.")
    return mapping


@dataclass(frozen=True)
class LabelSpec:
    """How raw label values and engine class maps become class indexes of one classes file."""

    class_names: tuple[str, ...]
    label_map: dict[int, int | None] | None  # None: raw value k is class k
    ignore_index: int | None
    background_class: int | None  # where the engine's "none of these" (0) goes; None: a miss

    def label_indexes(self, raw: np.ndarray, source: str) -> np.ndarray:
        """raw (H, W) label values -> (H, W) int16 class indexes, NO_CLASS where ignored."""
        values, inverse = np.unique(raw, return_inverse=True)
        lookup = np.empty(len(values), dtype=np.int16)
        unknown = []
        for i, value in enumerate(values.tolist()):
            if value == self.ignore_index:
                lookup[i] = NO_CLASS
            elif self.label_map is not None:
                if value not in self.label_map:
                    unknown.append(value)
                mapped = self.label_map.get(value)
                lookup[i] = NO_CLASS if mapped is None else mapped
            elif 0 <= value < len(self.class_names):
                lookup[i] = value
            else:
                unknown.append(value)
        if unknown:
            raise InputError(
                f"Label {source} has values {', '.join(map(str, unknown[:8]))} that are neither a class nor the "
                f"ignore index ({self.ignore_index}): give --label-map, --ignore-index or a --dataset preset."
            )
        return lookup[inverse.reshape(raw.shape)]

    def prediction_indexes(self, class_map: np.ndarray) -> np.ndarray:
        """Engine class map (H, W), 0 = none of these, k = class k -> (H, W) class indexes, NO_CLASS = miss."""
        indexes = class_map.astype(np.int16) - 1
        indexes[class_map == 0] = NO_CLASS if self.background_class is None else self.background_class
        return indexes


def _images_in(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"The {what} folder {folder} does not exist.")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            if path.stem in found:
                raise InputError(
                    f"Two {what} files share the name {path.stem}: {found[path.stem].name} and {path.name}."
                )
            found[path.stem] = path
    return found


def pair_images(images: Path, labels: Path, label_suffix: str = "") -> tuple[list[tuple[Path, Path]], list[Path]]:
    """Images and their labels paired by file stem (label stem = image stem + suffix), sorted by name.

    Returns the pairs and the images that have no label.
    """
    image_files = _images_in(images, "images")
    label_files = _images_in(labels, "labels")
    pairs = [
        (path, label_files[stem + label_suffix])
        for stem, path in image_files.items()
        if stem + label_suffix in label_files
    ]
    unpaired = [path for stem, path in image_files.items() if stem + label_suffix not in label_files]
    if not pairs:
        raise InputError(
            f"No image in {images} has a label of the same name in {labels}"
            + (f" (with suffix '{label_suffix}')." if label_suffix else ".")
        )
    return pairs, unpaired


def read_label(path: Path) -> np.ndarray:
    """A one-band label raster (PNG, GeoTIFF, ...) as its (H, W) integer values."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                if ds.count != 1:
                    raise InputError(
                        f"Label {path} has {ds.count} bands: labels must be one band of class values "
                        "(convert colour-coded labels to indexes first)."
                    )
                if not np.issubdtype(np.dtype(ds.dtypes[0]), np.integer):
                    raise InputError(f"Label {path} holds {ds.dtypes[0]} values: labels must be integers.")
                return ds.read(1)
    except RasterioIOError as error:
        raise InputError(f"Cannot read the label {path}: {error}.") from None


def _normalise(name: object) -> str:
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


@dataclass
class CocoDataset:
    """COCO ground truth re-keyed to the classes file: category id = class index + 1."""

    ground_truth: dict  # images, annotations (polygons as lists of rings), categories
    images: list[tuple[int, Path]]  # (image id, file) for the images found on disk, sorted by name
    missing: list[str]  # file names in the annotations with no image on disk


def load_coco(
    annotations: Path, images: Path, classes: tuple[ClassSpec, ...], category_map: dict[int, int | None] | None = None
) -> CocoDataset:
    """Read COCO instance annotations and map their categories to the classes.

    Categories map by ``category_map`` (category id -> class index, None drops the category), else
    by name: a category matches the class that has it as a synonym (case, '_' and '-' ignored).
    """
    try:
        data = json.loads(Path(annotations).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"Cannot read COCO annotations {annotations}: {error}.") from None
    if not all(isinstance(data.get(key), list) for key in ("images", "annotations", "categories")):
        raise InputError(
            f"{annotations} is not a COCO annotation file: it needs images, annotations and categories lists."
        )
    if category_map is None:
        by_synonym = {_normalise(s): k for k, c in enumerate(classes) for s in c.synonyms}
        category_map = {c["id"]: by_synonym.get(_normalise(c["name"])) for c in data["categories"]}
        unmatched = [str(c["name"]) for c in data["categories"] if category_map[c["id"]] is None]
        if unmatched:
            raise InputError(
                f"COCO categories {', '.join(unmatched[:8])} match no class of the classes file: "
                "rename them there or give --label-map CATEGORY_ID:CLASS (or :ignore)."
            )
    annotations_out = []
    for ann in data["annotations"]:
        if ann["category_id"] not in category_map:
            raise InputError(f"COCO category id {ann['category_id']} is missing from the label map.")
        index = category_map[ann["category_id"]]
        if index is None:
            continue
        segmentation = ann["segmentation"]
        if isinstance(segmentation, list) and segmentation and not isinstance(segmentation[0], list):
            segmentation = [segmentation]  # some exporters (e.g. solaris) write one flat polygon
        # area only selects COCO's size ranges, and we score one range that takes every area
        annotations_out.append(
            {"iscrowd": 0, "area": 0.0, **ann, "segmentation": segmentation, "category_id": index + 1}
        )
    found = _images_in(images, "images")
    on_disk, missing = [], []
    for image in sorted(data["images"], key=lambda im: im["file_name"]):
        path = found.get(Path(image["file_name"]).stem)
        if path is None:
            missing.append(image["file_name"])
        else:
            on_disk.append((image["id"], path))
    if not on_disk:
        raise InputError(f"None of the {len(data['images'])} images of {annotations} is in {images}.")
    ground_truth = {
        "images": data["images"],
        "annotations": annotations_out,
        "categories": [{"id": k + 1, "name": c.name} for k, c in enumerate(classes)],
    }
    return CocoDataset(ground_truth, on_disk, missing)
