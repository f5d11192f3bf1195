"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

# Third-party sample data beside the checkout (read-only; never copied into the repo).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# The plugin tests run in QGIS's own Python with their own settings (tests/plugin/pytest.ini): never here.
collect_ignore = ["plugin"]


def pytest_report_header(config) -> str:
    return "tests/plugin is not collected here: `make test-plugin` runs it in QGIS's Python"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real remote-sensing samples (see its README.md)."""
    assert SHARED_DATA.is_dir(), f"sample data folder {SHARED_DATA} is missing"
    return SHARED_DATA


@pytest.fixture
def make_geotiff(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a (B, H, W) array as a GeoTIFF in tmp_path; returns its path."""

    def make(
        data: np.ndarray,
        name: str = "synthetic.tif",
        crs: str | None = "EPSG:25832",
        transform: Affine = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5600000.0),
        nodata: float | None = None,
    ) -> Path:
        path = tmp_path / name
        count, height, width = data.shape
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=width,
            height=height,
            count=count,
            dtype=data.dtype,
            crs=crs,
            transform=transform,
            nodata=nodata,
        ) as ds:
            ds.write(data)
        return path

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """The tiny model saved to disk, so every run loads it through the real checkpoint path (ARCH@FILE)."""
    import torch

    from rsov.models import TINY_ARCH, TINY_MODEL, load_model

    with pytest.warns(UserWarning):
        tiny = load_model(TINY_MODEL)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(tiny.model.state_dict(), path)
    return f"{TINY_ARCH}@{path}"


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> tuple[str, str]:
    """The tiny CLIP and the tiny SAM saved to disk: ARCH@FILE names that load through the real paths."""
    import torch

    from rsov.models import TINY_ARCH, TINY_MODEL, load_model, load_sam

    folder = tmp_path_factory.mktemp("tiny")
    with pytest.warns(UserWarning):
        clip = load_model(TINY_MODEL)
        sam, _ = load_sam(TINY_MODEL)
    torch.save(clip.model.state_dict(), folder / "clip.pt")
    torch.save(sam.state_dict(), folder / "sam.pth")
    return f"{TINY_ARCH}@{folder / 'clip.pt'}", f"tiny@{folder / 'sam.pth'}"
