"""`rsov segment` / `rsov batch` at scale: Dask workers, resuming, and refusals with clear messages."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio

from rsov import cli

BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RSOV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RSOV_OFFLINE", "1")


@pytest.fixture
def oem(shared_data):
    return shared_data / "openearthmap" / "oem_koeln_50.tif"


@pytest.fixture(scope="module")
def mosaic(shared_data, tmp_path_factory):
    """The OpenEarthMap sample tiled 3 x 3 into a 3000 x 3000 px GeoTIFF (mirrored, so seams are smooth)."""
    with rasterio.open(shared_data / "openearthmap" / "oem_koeln_50.tif") as src:
        tile, profile = src.read(), src.profile
    row = np.concatenate([tile, tile[:, :, ::-1], tile], axis=2)
    data = np.concatenate([row, row[:, ::-1], row], axis=1)
    profile.update(
        width=data.shape[2], height=data.shape[1], tiled=True, blockxsize=256, blockysize=256, compress="lzw"
    )
    path = tmp_path_factory.mktemp("mosaic") / "mosaic.tif"
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


def run(capsys, *args):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def classes_of(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_dask_local_cluster_equals_one_process(capsys, tmp_path, oem, tiny_checkpoint):
    common = [
        "--classes",
        "building,roof; tree; road",
        "--model",
        tiny_checkpoint,
        "--block-size",
        "256",
        "--resolution",
        "0.7",
        "--quiet",
    ]
    code, single, err = run(
        capsys, "segment", oem, *common, "--out", tmp_path / "one.gpkg", "--raster-out", tmp_path / "one.tif"
    )
    assert code == 0, err
    code, dask, err = run(
        capsys,
        "segment",
        oem,
        *common,
        "--workers",
        "2",
        "--out",
        tmp_path / "two.gpkg",
        "--raster-out",
        tmp_path / "two.tif",
    )
    assert code == 0, err
    assert "2 local Dask workers" in dask and "16 blocks" in dask
    assert (classes_of(tmp_path / "one.tif") == classes_of(tmp_path / "two.tif")).all()
    assert pyogrio.read_info(tmp_path / "one.gpkg")["features"] == pyogrio.read_info(tmp_path / "two.gpkg")["features"]


def test_a_stopped_batch_resumes_where_it_stopped(tmp_path, mosaic, tiny_checkpoint):
    args = [
        BIN / "rsov",
        "batch",
        mosaic,
        "--classes",
        "building; tree; road",
        "--model",
        tiny_checkpoint,
        "--resolution",
        "0.5",
        "--block-size",
        "256",
        "--quiet",
        "--yes",
    ]
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([*args, "--out-dir", stopped], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(stopped.glob(".rsov-blocks/*/*.npz"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)  # stopped mid-way...
    assert not (stopped / "mosaic.gpkg").exists() and not (stopped / "mosaic_classes.tif").exists()
    done = len(list(stopped.glob(".rsov-blocks/*/*.npz")))
    assert 3 <= done < 144
    resumed = subprocess.run([*args, "--out-dir", stopped], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"144 blocks ({done} resumed)" in resumed.stdout  # ...and only the rest were computed
    assert not list(stopped.glob(".rsov-blocks/*/*.npz"))  # the store goes once the outputs are written
    fresh = subprocess.run([*args, "--out-dir", tmp_path / "fresh"], capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 0 and "(0 resumed)" in fresh.stdout
    assert (classes_of(stopped / "mosaic_classes.tif") == classes_of(tmp_path / "fresh" / "mosaic_classes.tif")).all()
    assert (
        pyogrio.read_info(stopped / "mosaic.gpkg")["features"]
        == pyogrio.read_info(tmp_path / "fresh" / "mosaic.gpkg")["features"]
    )


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--resolution", "1e-9"], "finer than the raster"),
        (["--resolution", "1e6"], "coarser than the raster"),
        (["--scheduler", "tcp://127.0.0.1:9"], "does not answer"),
        (["--max-windows", "5"], "add --yes"),
        (["--area", "AREA"], "does not overlap the raster"),
    ],
)
def test_bad_runs_are_refused_with_a_reason_and_write_nothing(capsys, tmp_path, oem, tiny_checkpoint, extra, words):
    if "AREA" in extra:
        (tmp_path / "area.geojson").write_text(
            '{"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}'
        )
        extra = ["--area", tmp_path / "area.geojson"]
    code, _, err = run(
        capsys,
        "segment",
        oem,
        "--classes",
        "tree",
        "--model",
        tiny_checkpoint,
        *extra,
        "--out",
        tmp_path / "o.gpkg",
        "--quiet",
    )
    assert code == 2 and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.gpkg").exists()


def test_yes_confirms_a_large_run(capsys, tmp_path, oem, tiny_checkpoint):
    code, out, err = run(
        capsys,
        "segment",
        oem,
        "--classes",
        "tree",
        "--model",
        tiny_checkpoint,
        "--max-windows",
        "5",
        "--yes",
        "--out",
        tmp_path / "o.gpkg",
        "--quiet",
    )
    assert code == 0, err
    assert "working resolution 1.14 m/px, auto" in out
