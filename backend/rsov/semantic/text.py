"""Text side: prompt templates and a persistent cache of query embeddings.

A query ("swimming pool") is embedded as the renormalised mean of its
L2-normalised template embeddings ("a photo of a swimming pool.", ...). Each
query's embedding is cached on disk, keyed by model weights + template set +
query, so editing one class re-embeds only that class.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from ..atomic import atomic_output
from ..errors import InputError
from ..models import LoadedModel, cache_dir

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    # The 80 OpenAI ImageNet templates, as SegEarth-OV uses them.
    "openai": tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES),
    # AerOSeg's remote-sensing templates.
    "remote-sensing": (
        "A satellite image of a {}.",
        "A land use image of a {}.",
        "A remote sensing image of a {}.",
        "An aerial image of a {}.",
    ),
    "plain": ("{}",),
}


def resolve_templates(name_or_path: str) -> tuple[str, ...]:
    """A template set by name, or a text file with one template per line, each containing ``{}``."""
    if name_or_path in TEMPLATE_SETS:
        return TEMPLATE_SETS[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise InputError(
            f"Unknown template set '{name_or_path}': use one of {', '.join(TEMPLATE_SETS)} or a file path."
        )
    templates = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise InputError(f"Template file {path} needs one template per line, each with '{{}}' for the class name.")
    return templates


class TextEmbedder(Protocol):
    """Anything that turns queries into L2-normalised embeddings (Q, C)."""

    def embed(self, queries: list[str]) -> torch.Tensor: ...


def embed_in_steps(
    text: TextEmbedder, queries: list[str], progress: Callable[[int, int], None], step: int = 16
) -> None:
    """Embed ``queries`` ``step`` at a time (into the embedder's cache), ``progress(done, total)`` after each:
    a large cold vocabulary takes seconds, and the analyst should see it move."""
    unique = list(dict.fromkeys(queries))
    for start in range(0, len(unique), step):
        text.embed(unique[start : start + step])
        progress(min(start + step, len(unique)), len(unique))


class ClipTextEmbedder:
    """CLIP text tower + template averaging + a two-level (memory, disk) cache."""

    def __init__(
        self, loaded: LoadedModel, templates: tuple[str, ...], batch_size: int = 256, cache_root: Path | None = None
    ) -> None:
        self.loaded = loaded
        self.templates = templates
        self.batch_size = batch_size
        key = hashlib.sha256("\n".join(templates).encode()).hexdigest()[:16]
        self.cache_path = (cache_root or cache_dir() / "text") / _safe(loaded.weights_id) / key
        self._memory: dict[str, np.ndarray] = {}
        self.encoded_queries = 0  # how many queries went through the text tower (for tests and benches)

    def embed(self, queries: list[str]) -> torch.Tensor:
        """Embeddings of ``queries``, shape (Q, C), float32, unit L2 norm."""
        missing = [q for q in dict.fromkeys(queries) if self._lookup(q) is None]
        if missing:
            for query, vector in zip(missing, self._encode(missing), strict=True):
                self._store(query, vector)
        return torch.from_numpy(np.stack([self._memory[q] for q in queries]))

    @torch.inference_mode()
    def _encode(self, queries: list[str]) -> np.ndarray:
        model, device = self.loaded.model, self.loaded.device
        texts = [t.format(q) for q in queries for t in self.templates]
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.loaded.tokenizer(texts[start : start + self.batch_size]).to(device)
            chunks.append(F.normalize(encode_text_trimmed(model, tokens).float(), dim=-1).cpu())
        per_template = torch.cat(chunks).view(len(queries), len(self.templates), -1)
        self.encoded_queries += len(queries)
        return F.normalize(per_template.mean(dim=1), dim=-1).numpy()

    def _file(self, query: str) -> Path:
        return self.cache_path / (hashlib.sha256(query.encode()).hexdigest()[:32] + ".npy")

    def _lookup(self, query: str) -> np.ndarray | None:
        if query not in self._memory:
            try:
                self._memory[query] = np.load(self._file(query))
            except (OSError, ValueError):
                return None
        return self._memory[query]

    def _store(self, query: str, vector: np.ndarray) -> None:
        self._memory[query] = vector.astype(np.float32)
        try:  # the disk cache is an optimisation: a read-only cache dir must not fail a job
            self.cache_path.mkdir(parents=True, exist_ok=True)
            with atomic_output(self._file(query)) as partial:
                np.save(partial, self._memory[query])
        except (OSError, InputError):  # atomic_output says InputError for an unwritable folder
            pass


def encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)`` without the padding: (N, 77) tokens -> (N, C).

    CLIP's text tower is causal and pools the end-of-text token (the largest id), so the
    positions after the longest prompt cannot change the result; prompts are ~10 tokens
    of 77, so dropping them makes text encoding several times faster. Other text towers
    (or pooling rules) fall back to ``encode_text``.
    """
    clip: Any = model  # open_clip's CLIP: its towers' attributes are untyped
    plain = getattr(clip, "text_pool_type", None) == "argmax" and getattr(clip, "attn_mask", None) is not None
    if not plain or not hasattr(clip, "token_embedding"):
        return clip.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens).to(cast) + clip.positional_embedding[:length].to(cast)
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:length, :length]))
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
    return clip.text_projection(x) if isinstance(clip.text_projection, torch.nn.Linear) else x @ clip.text_projection


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
