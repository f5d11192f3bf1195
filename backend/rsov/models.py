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
by ``build_clip``, so the path tests exercise with a tiny saved checkpoint is the
path real weights take. A file may be an open_clip state dict, an OpenAI-format
state dict, or OpenAI's own TorchScript archive (``ViT-B-16.pt``); OpenAI's weights
need QuickGELU, which is taken from the file's format or the registry, never guessed.
"""

from __future__ import annotations

import logging
import os

# only for pickle.UnpicklingError: checkpoints are read by torch.load(weights_only=True), never unpickled here
import pickle  # nosec B403
import socket
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import open_clip
import torch
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

from . import weights
from .errors import InputError, WeightsMissingError

if TYPE_CHECKING:
    from .instance.sam3_build import Sam3Size

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
    sha256: str | None = None  # of the weights file, where it is known
    size_bytes: int | None = None  # of the weights file, where it is known
    quick_gelu: bool = False  # trained with QuickGELU (OpenAI and models fine-tuned from it)
    licence_url: str | None = None  # a gated download: where a person accepts the licence first


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
        ModelSpec(
            "sam-vit-b",
            "vit_b",
            "Segment Anything ViT-B",
            checkpoint="sam_vit_b_01ec64.pth",
            source_url=_SAM_URL + "sam_vit_b_01ec64.pth",
            size_bytes=375_042_383,
            sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        ),
        ModelSpec(
            "sam-vit-l",
            "vit_l",
            "Segment Anything ViT-L",
            checkpoint="sam_vit_l_0b3195.pth",
            source_url=_SAM_URL + "sam_vit_l_0b3195.pth",
            size_bytes=1_249_524_607,
            sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        ),
        ModelSpec(
            "sam-vit-h",
            "vit_h",
            "Segment Anything ViT-H",
            checkpoint="sam_vit_h_4b8939.pth",
            source_url=_SAM_URL + "sam_vit_h_4b8939.pth",
            size_bytes=2_564_550_879,
            sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        ),
        ModelSpec(TINY_MODEL, "tiny", "2-layer random SAM for tests; its masks are MEANINGLESS", random=True),
    )
}
DEFAULT_SAM = "sam-vit-b"

# SAM 3, the concept engine (``--engine sam3``). ``arch`` names a size in ``instance.sam3_build.SAM3_SIZES``.
_SAM3_HUB = "https://huggingface.co/facebook/sam3"
SAM3_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "sam3",
            "sam3",
            "Meta Segment Anything 3 (840M parameters; gated: accept its licence on the hub first)",
            checkpoint="sam3.pt",
            source_url=_SAM3_HUB + "/resolve/main/sam3.pt",
            licence_url=_SAM3_HUB,
        ),
        ModelSpec(
            TINY_MODEL, "sam3-tiny", "SAM 3 at 1/16 width for tests; its detections are MEANINGLESS", random=True
        ),
    )
}
DEFAULT_SAM3 = "sam3"


@dataclass
class LoadedModel:
    """A CLIP model ready for inference, with what is needed to feed it."""

    spec: ModelSpec
    model: torch.nn.Module  # open_clip.CLIP in eval mode
    tokenizer: Callable[[list[str]], torch.Tensor]  # texts -> (N, context length) token ids
    mean: tuple[float, float, float]  # per-channel normalisation of 0..1 RGB
    std: tuple[float, float, float]
    weights_id: str  # identifies the weights, for caches keyed by model
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    activation: str = ""  # QuickGELU or GELU, and why


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
        checkpoint = Path(path).expanduser().resolve()  # relative to the current folder, like any command-line path
        return ModelSpec(name, arch, f"{kind} {arch} from local checkpoint {checkpoint}", checkpoint=str(checkpoint))
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


def resolve_sam3_spec(name: str) -> ModelSpec:
    """A SAM 3 model name (a key of ``SAM3_MODELS``) or ``sam3@/path/to/sam3.pt`` (or ``sam3-tiny@...``)."""
    from .instance.sam3_build import SAM3_SIZES

    return _resolve(name, SAM3_MODELS, tuple(SAM3_SIZES), "SAM 3")


def hub_token(explicit: str | None = None) -> str | None:
    """The Hugging Face token for gated downloads: given, ``RSOV_HF_TOKEN``, or huggingface_hub's own
    (``HF_TOKEN``, or the one ``hf auth login`` saved)."""
    if explicit:
        return explicit
    if os.environ.get("RSOV_HF_TOKEN"):
        return os.environ["RSOV_HF_TOKEN"]
    from huggingface_hub import get_token

    return get_token()


def _pretrained_cfg(spec: ModelSpec) -> dict:
    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained)
    if not cfg:
        raise InputError(f"open_clip has no pretrained weights '{spec.pretrained}' for {spec.arch}.")
    return cfg


def _hub_files(spec: ModelSpec) -> list[tuple[str, str]]:
    """The Hugging Face hub files open_clip may have downloaded for a pretrained tag."""
    hub = _pretrained_cfg(spec).get("hf_hub")
    if not hub:
        return []
    # open_clip's convention: "org/repo/" means its default file names, "org/repo/file" one file.
    repo, filename = os.path.split(hub)
    return [(repo, name) for name in ([filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME])]


def weights_url(spec: ModelSpec) -> str | None:
    """The one file rsov downloads for ``spec`` (None: random, local, or hub-only)."""
    if spec.random:
        return None
    if spec.checkpoint:
        return spec.source_url
    return _pretrained_cfg(spec).get("url") or None


def weights_target(spec: ModelSpec) -> Path:
    """Where the weights file of ``spec`` lives in the cache (downloads and imports go there)."""
    if spec.checkpoint:
        path = Path(spec.checkpoint)
        return path if path.is_absolute() else cache_dir() / "checkpoints" / path
    url = weights_url(spec)
    if url is None:
        raise InputError(f"Model '{spec.name}' has no single weights file to download or import.")
    return cache_dir() / "open_clip" / os.path.basename(urlparse(url).path)


def expected_sha256(spec: ModelSpec) -> str | None:
    """The known digest of ``spec``'s weights file: the registry's, or the one OpenAI puts in its URLs."""
    if spec.sha256:
        return spec.sha256
    url = weights_url(spec) or ""
    if spec.pretrained and "openaipublic" in url:
        return url.split("/")[-2]  # .../clip/models/<sha256>/ViT-B-16.pt, as open_clip checks it
    return None


def _trained_with_quick_gelu(spec: ModelSpec) -> bool:
    return spec.quick_gelu or bool(spec.pretrained and _pretrained_cfg(spec).get("quick_gelu"))


def find_weights(spec: ModelSpec) -> Path | None:
    """The local weights file for ``spec`` if it is already on disk, else None."""
    if spec.random:
        return None
    if spec.checkpoint or weights_url(spec):
        target = weights_target(spec)
        if target.is_file():
            return target
        if spec.checkpoint:
            return None
    from huggingface_hub import try_to_load_from_cache

    for repo, filename in _hub_files(spec):
        hit = try_to_load_from_cache(repo, filename, cache_dir=str(cache_dir() / "open_clip"))
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    return None


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """A quick TCP check, so an offline machine fails in seconds, not after minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("RSOV_OFFLINE") == "1":
        return False
    parts = urlparse(url)
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        with socket.create_connection((parts.hostname or url, port), timeout=timeout):
            return True
    except OSError:
        return False


def _missing(spec: ModelSpec) -> WeightsMissingError:
    url = weights_url(spec)
    places = [f"{weights_target(spec)} (from {url})"] if url else []
    places += [
        f"{r}/{f} in the Hugging Face hub cache {cache_dir() / 'open_clip'}"
        for r, f in (_hub_files(spec) if spec.pretrained else [])
    ]
    if not places:
        return WeightsMissingError(f"Checkpoint file for model '{spec.name}' not found: {weights_target(spec)}.")
    if spec.licence_url:
        return WeightsMissingError(
            f"Weights for '{spec.name}' ({spec.description}) are not on this machine: expected "
            f"{weights_target(spec)}. {_licence_step(spec)}"
        )
    return WeightsMissingError(
        f"Weights for model '{spec.name}' ({spec.description}) are not available offline: expected "
        f"{' or '.join(places)}. Run `rsov models --download {spec.name}` on a machine with internet and "
        f"copy {cache_dir()} here, or download the file and run `rsov models --import FILE`. "
        f"Set RSOV_CACHE_DIR to use another cache directory, or run with --model {TINY_MODEL} "
        "for a meaningless smoke test."
    )


def _licence_step(spec: ModelSpec) -> str:
    return (
        f"They are gated: sign in at {spec.licence_url}, accept the licence there, then make a read token "
        "available (HF_TOKEN or RSOV_HF_TOKEN, `hf auth login`, or the Hub token field in the plugin's Backend tab) "
        f"and run `rsov models --download {spec.name}`; or download {spec.checkpoint} there and run "
        f"`rsov models --import {spec.checkpoint} --name {spec.name}`."
    )


def download_weights(spec: ModelSpec, progress: weights.Progress | None = None, token: str | None = None) -> Path:
    """Return the local weights file for ``spec``, downloading (and verifying) it into the cache if needed;
    a gated model is downloaded with ``token`` (default: ``hub_token()``)."""
    found = find_weights(spec)
    if found is not None:
        return found
    url = weights_url(spec)
    if url is not None and _reachable(url):
        target = weights_target(spec)
        token = hub_token(token) if spec.licence_url else None
        if spec.licence_url and token is None:
            raise WeightsMissingError(f"Downloading '{spec.name}' needs a Hugging Face token. {_licence_step(spec)}")
        try:
            weights.download(url, target, expected_sha256(spec), progress, token)
        except weights.AccessRefusedError as exc:
            raise weights.AccessRefusedError(f"{exc} {_licence_step(spec)}") from None
        return target
    if spec.pretrained and _hub_files(spec) and _reachable(f"https://{_HF_HOST}"):
        return Path(open_clip.download_pretrained(_pretrained_cfg(spec), cache_dir=str(cache_dir() / "open_clip")))
    raise _missing(spec)


def _spec_of_digest(digest: str) -> ModelSpec | None:
    for registry in (MODELS, SAM_MODELS, SAM3_MODELS):
        for spec in registry.values():
            if not spec.random and expected_sha256(spec) == digest:
                return spec
    return None


def resolve_any(name: str) -> ModelSpec:
    """A CLIP, SAM or SAM 3 model name from any registry."""
    for registry in (SAM_MODELS, SAM3_MODELS):
        if name in registry and name != TINY_MODEL:
            return registry[name]
    return resolve_spec(name)


def import_weights(
    source: str | os.PathLike, name: str | None = None, progress: weights.Progress | None = None
) -> tuple[ModelSpec, Path]:
    """Copy a weights file downloaded elsewhere into the cache, verified against the known digest.

    Without ``name`` the file is identified by its digest; a digest that does not match
    the named model's is refused. Where no digest is known, the file must load into the
    model's architecture."""
    digest = weights.sha256_file(source, progress)
    spec = resolve_any(name) if name else _spec_of_digest(digest)
    if spec is None:
        raise InputError(
            f"{source} (sha256 {digest}) is not a weights file rsov knows: "
            "name its model with --name NAME (see `rsov models`)."
        )
    if spec.random or "@" in spec.name:
        raise InputError(f"Model '{spec.name}' takes no weights file in the cache.")
    expected = expected_sha256(spec)
    weights.check_digest(digest, expected, str(source))
    if expected is None:
        _check_loads(spec, Path(source))
    target = weights_target(spec)
    weights.install_copy(source, target)
    return spec, target


def _check_loads(spec: ModelSpec, path: Path) -> None:
    """Refuse a file that does not load into ``spec``'s architecture."""
    if spec in SAM3_MODELS.values():
        load_sam3_file(spec, path)
    elif spec in SAM_MODELS.values():
        try:
            _sam_builder(spec.arch)(checkpoint=str(path))
        except (RuntimeError, KeyError, OSError, ValueError, EOFError) as exc:
            raise InputError(
                f"{path} does not load into {spec.arch} for '{spec.name}': {str(exc).splitlines()[0]}"
            ) from None
    else:
        build_clip(spec, path, torch.device("cpu"))


OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")  # kept in OpenAI's state dicts only


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives (OpenAI's own ``ViT-B-16.pt``) are zips with code and constants."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """The state dict in ``path`` and whether it is in OpenAI's format (a TorchScript archive
    or a state dict with OpenAI's extra entries)."""
    if _is_torchscript(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, OpenAI's archives are not
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict()), True
    from open_clip.factory import load_state_dict  # safetensors, {"state_dict": ...} and "module." prefixes

    state = load_state_dict(str(path))
    return state, any(key in state for key in OPENAI_EXTRAS)


def _activation(spec: ModelSpec, path: Path, openai_format: bool) -> tuple[bool, str]:
    """Whether to build with QuickGELU, and why: from the file's format, the registry, the
    architecture's config or the file's digest; GELU is never chosen silently."""
    if openai_format:
        return True, "QuickGELU (the file is in OpenAI's format)"
    if "@" not in spec.name:  # a registry entry says how its model was trained
        quick = _trained_with_quick_gelu(spec)
        return quick, f"{'QuickGELU' if quick else 'GELU'} (the registry's entry for {spec.name})"
    if (open_clip.get_model_config(spec.arch) or {}).get("quick_gelu"):
        return True, f"QuickGELU ({spec.arch}'s config)"
    known = _spec_of_digest(weights.sha256_file(path))
    if known is not None and _trained_with_quick_gelu(known):
        return True, f"QuickGELU (the file is {known.name}'s, by its digest)"
    note = f"GELU ({spec.arch}'s config)"
    if f"{spec.arch}-quickgelu" in open_clip.list_models():
        note += f"; weights trained with QuickGELU (OpenAI's, or fine-tuned from them) need {spec.arch}-quickgelu@FILE"
    log.warning("Model '%s' is built with %s.", spec.name, note)
    return False, note


class _RandomInitNotice(logging.Filter):
    """open_clip's "initialized randomly" notice, wrong where build_clip loads the weights next."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


def build_clip(spec: ModelSpec, path: Path, device: torch.device) -> tuple[torch.nn.Module, str]:
    """open_clip's ``spec.arch`` with the weights in ``path``; returns the model and its activation."""
    try:
        state, openai_format = read_checkpoint(path)
    except (RuntimeError, OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise InputError(
            f"Could not load weights {path} for model '{spec.name}': not a checkpoint ({str(exc).splitlines()[0]})."
        ) from None
    quick_gelu, activation = _activation(spec, path, openai_format)
    notice = _RandomInitNotice()
    logging.getLogger().addFilter(notice)  # open_clip logs through the root logger
    try:
        model = open_clip.create_model(spec.arch, pretrained=None, force_quick_gelu=quick_gelu)
    finally:
        logging.getLogger().removeFilter(notice)
    transient = {name for name, _ in model.named_buffers()} - set(model.state_dict())  # e.g. attn_mask
    state = {k: v for k, v in state.items() if k not in OPENAI_EXTRAS and k not in transient}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(
            f"Could not load weights {path} into {spec.arch} for model '{spec.name}': "
            f"{str(exc).splitlines()[0]} {_key_summary(model, state)}"
        ) from None
    return model.to(device), activation


def _key_summary(model: torch.nn.Module, state: dict) -> str:
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    return f"(missing {len(missing)} keys, e.g. {missing[:3]}; unexpected {len(unexpected)}, e.g. {unexpected[:3]})"


def load_model(name: str = DEFAULT_MODEL, device: str | torch.device = "cpu", download: bool = True) -> LoadedModel:
    """Build the CLIP model called ``name`` on ``device``, in eval mode, weights resolved as the module
    doc says (downloaded if missing, unless ``download`` is False: then WeightsMissingError)."""
    spec = resolve_spec(name)
    device = torch.device(device)
    if spec.random:
        warnings.warn(f"Model '{spec.name}' has random weights: its segmentations are MEANINGLESS.", stacklevel=2)
        torch.manual_seed(0)
        model = open_clip.create_model(spec.arch, pretrained=None, device=device)
        weights_id, activation = f"{spec.name}-seed0", "QuickGELU (random weights)"
    else:
        path = download_weights(spec) if download else find_weights(spec)
        if path is None:
            raise _missing(spec)
        model, activation = build_clip(spec, path, device)
        stat = path.stat()
        weights_id = f"{spec.name}-{path.name}-{stat.st_size}-{int(stat.st_mtime)}"
    model.eval().requires_grad_(False)
    mean = tuple(getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    return LoadedModel(spec, model, open_clip.get_tokenizer(spec.arch), mean, std, weights_id, device, activation)


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


def load_sam3_file(spec: ModelSpec, path: Path | None) -> torch.nn.Module:
    """SAM 3 of ``spec``'s size with the checkpoint at ``path`` (None: random weights, seed 0)."""
    from .instance.sam3_build import SAM3_SIZES, build_sam3, load_checkpoint

    torch.manual_seed(0)
    model = build_sam3(SAM3_SIZES[spec.arch])
    if path is not None:
        load_checkpoint(model, path)
    return model


def load_sam3(name: str = DEFAULT_SAM3, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Sam3Size, str]:
    """The SAM 3 model called ``name`` in eval mode, its size and an id of its weights. Never downloads:
    missing weights raise WeightsMissingError naming the licence step (``rsov models --download``)."""
    from .instance.sam3_build import SAM3_SIZES

    spec = resolve_sam3_spec(name)
    if spec.random:
        warnings.warn(f"SAM 3 '{spec.name}' has random weights: its detections are MEANINGLESS.", stacklevel=2)
        path, weights_id = None, f"sam3-{spec.name}-seed0"
    else:
        path = find_weights(spec)
        if path is None:
            raise _missing(spec)
        stat = path.stat()
        weights_id = f"sam3-{spec.name}-{path.name}-{stat.st_size}-{int(stat.st_mtime)}"
    model = load_sam3_file(spec, path)
    return model.to(device).eval().requires_grad_(False), SAM3_SIZES[spec.arch], weights_id


def list_models() -> list[dict]:
    """Known CLIP, SAM and SAM 3 models: whether their weights are on this machine, where, and their size."""
    rows = []
    for kind, registry in (("clip", MODELS), ("sam", SAM_MODELS), ("sam3", SAM3_MODELS)):
        for name, spec in registry.items():
            if name != spec.name:
                continue  # aliases
            path = None if spec.random else find_weights(spec)
            rows.append(
                {
                    "name": name,
                    "kind": kind,
                    "arch": spec.arch,
                    "description": spec.description,
                    "weights_present": spec.random or path is not None,
                    "path": str(path) if path else None,
                    "size_bytes": path.stat().st_size if path else spec.size_bytes,
                    "sha256": None if spec.random else expected_sha256(spec),
                    "downloadable": weights_url(spec) is not None or bool(spec.pretrained),
                }
            )
    return rows
