"""The one place CLIP models are named, found on disk and built.

A model name maps to an open_clip architecture plus a weights source, the way
open_clip's own factory works (configuration as data, in ``MODELS``):

* a pretrained tag (``ViT-B-16`` + ``openai``): open_clip's normal download into
  the cache directory (``RSOV_CACHE_DIR``, default ``~/.cache/rsov``);
* a checkpoint file: RemoteCLIP/GeoRSCLIP-style state dicts, either a known
  model whose file is expected in the cache, or ``ARCH@/path/to/file.pt``;
* ``tiny-random``: a 2-layer CLIP built in-process with a fixed seed, for tests
  and smoke runs. Its output is meaningless and it says so.

Whatever the source, weights are resolved to a local file first and then loaded
through ``open_clip.create_model(arch, pretrained=FILE)``, so the path tests
exercise with a tiny saved checkpoint is the path real weights take.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import torch
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

from .errors import InputError, WeightsMissingError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-16-openai"
TINY_MODEL = "tiny-random"
TINY_ARCH = "rsov-tiny"
_HF_HOST = "huggingface.co"

# Our own small architectures (the tiny test model) live beside this file.
open_clip.add_model_config(Path(__file__).parent / "model_configs")


@dataclass(frozen=True)
class ModelSpec:
    """How to get one CLIP model: an open_clip architecture and where its weights come from."""

    name: str
    arch: str
    description: str
    pretrained: str | None = None  # open_clip pretrained tag
    checkpoint: str | None = None  # file name in <cache>/checkpoints, or an absolute path
    source_url: str | None = None  # where a person downloads `checkpoint` from
    random: bool = False  # built with a fixed seed, no weights at all


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("ViT-B-16-openai", "ViT-B-16", "OpenAI CLIP ViT-B/16 (SegEarth-OV default)", pretrained="openai"),
        ModelSpec("ViT-L-14-openai", "ViT-L-14", "OpenAI CLIP ViT-L/14 (slower, 768-d)", pretrained="openai"),
        ModelSpec(
            "RemoteCLIP-ViT-B-32",
            "ViT-B-32",
            "RemoteCLIP ViT-B/32 (remote-sensing CLIP)",
            checkpoint="RemoteCLIP-ViT-B-32.pt",
            source_url="https://huggingface.co/chendelong/RemoteCLIP/resolve/main/RemoteCLIP-ViT-B-32.pt",
        ),
        ModelSpec(
            "GeoRSCLIP-ViT-B-32",
            "ViT-B-32",
            "GeoRSCLIP ViT-B/32 trained on RS5M (remote-sensing CLIP)",
            checkpoint="RS5M_ViT-B-32.pt",
            source_url="https://huggingface.co/Zilun/GeoRSCLIP/resolve/main/ckpt/RS5M_ViT-B-32.pt",
        ),
        ModelSpec(TINY_MODEL, TINY_ARCH, "2-layer random CLIP for tests; its output is MEANINGLESS", random=True),
    )
}
MODELS["ViT-B-16"] = MODELS[DEFAULT_MODEL]  # the open_clip name works too

# Segment Anything, for instance proposals. ``arch`` names a builder in SAM_ARCHS.
_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
SAM_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("sam-vit-b", "vit_b", "Segment Anything ViT-B", checkpoint="sam_vit_b_01ec64.pth",
                  source_url=_SAM_URL + "sam_vit_b_01ec64.pth"),
        ModelSpec("sam-vit-l", "vit_l", "Segment Anything ViT-L", checkpoint="sam_vit_l_0b3195.pth",
                  source_url=_SAM_URL + "sam_vit_l_0b3195.pth"),
        ModelSpec("sam-vit-h", "vit_h", "Segment Anything ViT-H", checkpoint="sam_vit_h_4b8939.pth",
                  source_url=_SAM_URL + "sam_vit_h_4b8939.pth"),
        ModelSpec(TINY_MODEL, "tiny", "2-layer random SAM for tests; its masks are MEANINGLESS", random=True),
    )
}
DEFAULT_SAM = "sam-vit-b"


@dataclass
class LoadedModel:
    """A CLIP model ready for inference, with what is needed to feed it."""

    spec: ModelSpec
    model: torch.nn.Module  # open_clip.CLIP in eval mode
    tokenizer: object
    mean: tuple[float, float, float]  # per-channel normalisation of 0..1 RGB
    std: tuple[float, float, float]
    weights_id: str  # identifies the weights, for caches keyed by model
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def cache_dir() -> Path:
    """Root of rsov's model and text-embedding caches (``RSOV_CACHE_DIR``)."""
    root = os.environ.get("RSOV_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rsov"
    return Path(root).expanduser()


def _resolve(name: str, registry: dict[str, ModelSpec], archs, kind: str) -> ModelSpec:
    """A registry name, or ``ARCH@/path/to/checkpoint`` for any architecture in ``archs``."""
    if "@" in name:
        arch, path = name.split("@", 1)
        if arch not in archs:
            raise InputError(f"Unknown {kind} architecture '{arch}' in '{name}'.")
        return ModelSpec(name, arch, f"{kind} {arch} from local checkpoint {path}", checkpoint=str(Path(path).expanduser()))
    try:
        return registry[name]
    except KeyError:
        known = ", ".join(sorted(registry))
        raise InputError(f"Unknown {kind} model '{name}'. Known: {known}; or use ARCH@/path/to/checkpoint.") from None


def resolve_spec(name: str) -> ModelSpec:
    """A CLIP model name (a key of ``MODELS``) or ``ARCH@/path/to/checkpoint.pt`` (open_clip ARCH) -> spec."""
    return _resolve(name, MODELS, open_clip.list_models(), "CLIP")


def resolve_sam_spec(name: str) -> ModelSpec:
    """A SAM model name (a key of ``SAM_MODELS``) or ``ARCH@/path/to/checkpoint.pth`` -> spec."""
    return _resolve(name, SAM_MODELS, SAM_ARCHS, "SAM")


def _checkpoint_path(spec: ModelSpec) -> Path:
    path = Path(spec.checkpoint)
    return path if path.is_absolute() else cache_dir() / "checkpoints" / path


def _open_clip_candidates(spec: ModelSpec) -> tuple[dict, list[tuple[str, str]], Path | None]:
    """open_clip's pretrained config, the hub files it may use, and the URL download target."""
    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained)
    if not cfg:
        raise InputError(f"open_clip has no pretrained weights '{spec.pretrained}' for {spec.arch}.")
    hub_files: list[tuple[str, str]] = []
    if cfg.get("hf_hub"):
        # open_clip's convention: "org/repo/" means its default file names, "org/repo/file" one file.
        repo, filename = os.path.split(cfg["hf_hub"])
        names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        hub_files = [(repo, name) for name in names]
    url_target = cache_dir() / "open_clip" / os.path.basename(cfg["url"]) if cfg.get("url") else None
    return cfg, hub_files, url_target


def find_weights(spec: ModelSpec) -> Path | None:
    """The local weights file for ``spec`` if it is already on disk, else None."""
    if spec.random:
        return None
    if spec.checkpoint:
        path = _checkpoint_path(spec)
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    _, hub_files, url_target = _open_clip_candidates(spec)
    for repo, filename in hub_files:
        hit = try_to_load_from_cache(repo, filename, cache_dir=str(cache_dir() / "open_clip"))
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    if url_target is not None and url_target.is_file():
        return url_target
    return None


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """A quick TCP check, so an offline machine fails in seconds, not after minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("RSOV_OFFLINE") == "1":
        return False
    host = urlparse(url).hostname or url
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _missing(spec: ModelSpec, expected: str, how: str) -> WeightsMissingError:
    return WeightsMissingError(
        f"Weights for model '{spec.name}' ({spec.description}) are not available offline: "
        f"expected {expected}. {how} Set RSOV_CACHE_DIR to use another cache directory, "
        f"or run with --model {TINY_MODEL} for a meaningless smoke test."
    )


def download_weights(spec: ModelSpec) -> Path:
    """Return the local weights file for ``spec``, downloading it into the cache if needed."""
    found = find_weights(spec)
    if found is not None:
        return found
    if spec.checkpoint:
        target = _checkpoint_path(spec)
        if spec.source_url is None:
            raise WeightsMissingError(f"Checkpoint file for model '{spec.name}' not found: {target}.")
        if not _reachable(spec.source_url):
            raise _missing(spec, str(target), f"Download {spec.source_url} and save it there.")
        # open_clip saves it as <dir>/<basename of the URL>, which is how checkpoint names are chosen.
        return Path(open_clip.download_pretrained_from_url(spec.source_url, cache_dir=str(target.parent)))
    cfg, hub_files, url_target = _open_clip_candidates(spec)
    probe = f"https://{_HF_HOST}" if hub_files else cfg["url"]
    if not _reachable(probe):
        where = (
            f"one of {', '.join(f'{r}/{f}' for r, f in hub_files)} from the Hugging Face hub in "
            f"{cache_dir() / 'open_clip'}" if hub_files else str(url_target)
        )
        how = (
            f"On a machine with internet run `rsov models --download {spec.name}` and copy "
            f"{cache_dir()} here, or download the weights and pass --model {spec.arch}@/path/to/file."
        )
        raise _missing(spec, where, how)
    path = open_clip.download_pretrained(cfg, cache_dir=str(cache_dir() / "open_clip"))
    return Path(path)


def load_model(name: str = DEFAULT_MODEL, device: str | torch.device = "cpu") -> LoadedModel:
    """Build the CLIP model called ``name`` on ``device``, in eval mode, weights resolved as the module doc says."""
    spec = resolve_spec(name)
    device = torch.device(device)
    if spec.random:
        warnings.warn(f"Model '{spec.name}' has random weights: its segmentations are MEANINGLESS.", stacklevel=2)
        torch.manual_seed(0)
        model = open_clip.create_model(spec.arch, pretrained=None, device=device)
        weights_id = f"{spec.name}-seed0"
    else:
        path = download_weights(spec)
        quick_gelu = bool(spec.pretrained and open_clip.get_pretrained_cfg(spec.arch, spec.pretrained).get("quick_gelu"))
        try:
            model = open_clip.create_model(spec.arch, pretrained=str(path), device=device, force_quick_gelu=quick_gelu)
        except (RuntimeError, KeyError, OSError, ValueError) as exc:
            raise InputError(f"Could not load weights {path} into {spec.arch} for model '{spec.name}': {exc}") from exc
        stat = path.stat()
        weights_id = f"{spec.name}-{path.name}-{stat.st_size}-{int(stat.st_mtime)}"
    model.eval().requires_grad_(False)
    mean = tuple(getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    return LoadedModel(spec, model, open_clip.get_tokenizer(spec.arch), mean, std, weights_id, device)


def _tiny_sam(checkpoint: str | None = None) -> torch.nn.Module:
    from segment_anything.build_sam import _build_sam

    return _build_sam(96, 2, 2, [1], checkpoint=checkpoint)


SAM_ARCHS = ("vit_b", "vit_l", "vit_h", "tiny")


def _sam_builder(arch: str):
    from segment_anything import sam_model_registry  # imported late: it pulls in torchvision

    return _tiny_sam if arch == "tiny" else sam_model_registry[arch]


def load_sam(name: str = DEFAULT_SAM, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, str]:
    """Build the Segment Anything model called ``name`` in eval mode; returns it and an id of its weights."""
    spec = resolve_sam_spec(name)
    build = _sam_builder(spec.arch)
    if spec.random:
        warnings.warn(f"SAM '{spec.name}' has random weights: its masks are MEANINGLESS.", stacklevel=2)
        torch.manual_seed(0)
        model, weights_id = build(), f"sam-{spec.name}-seed0"
    else:
        path = download_weights(spec)
        try:
            model = build(checkpoint=str(path))
        except (RuntimeError, KeyError, OSError, ValueError) as exc:
            raise InputError(f"Could not load SAM weights {path} into {spec.arch}: {exc}") from exc
        stat = path.stat()
        weights_id = f"sam-{spec.name}-{path.name}-{stat.st_size}-{int(stat.st_mtime)}"
    return model.to(device).eval().requires_grad_(False), weights_id


def list_models() -> list[dict]:
    """Known CLIP and SAM models with whether their weights are on this machine (for ``rsov models``)."""
    rows = []
    for kind, registry in (("clip", MODELS), ("sam", SAM_MODELS)):
        for name, spec in registry.items():
            if name != spec.name:
                continue  # aliases
            present = spec.random or find_weights(spec) is not None
            rows.append({"name": name, "kind": kind, "arch": spec.arch, "description": spec.description,
                         "weights_present": present})
    return rows
