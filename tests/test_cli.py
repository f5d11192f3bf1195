"""The `rsov` command line on real rasters, with the tiny model saved and loaded back as a checkpoint."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import torch
from shapely.geometry import box

from rsov import cli

BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RSOV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RSOV_OFFLINE", "1")


def run(capsys, *args):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_segment_real_geotiff(capsys, tmp_path, shared_data, tiny_checkpoint):
    raster = shared_data / "openearthmap" / "oem_koeln_50.tif"
    out = tmp_path / "oem.gpkg"
    code, stdout, _ = run(
        capsys,
        "segment",
        raster,
        "--classes",
        "building,roof; tree; road",
        "--model",
        tiny_checkpoint,
        "--out",
        out,
        "--raster-out",
        tmp_path / "classes.tif",
        "--preview",
        tmp_path / "p.png",
        "--quiet",
    )
    assert code == 0
    assert stdout.count("\n") == 1 and "polygons" in stdout and str(out) in stdout
    info = pyogrio.read_info(out)
    assert info["crs"] == "EPSG:25832"
    assert {"class", "class_id", "score", "area_m2"} <= set(info["fields"])
    with rasterio.open(raster) as src:
        bounds = box(*src.bounds)
    frame = pyogrio.raw.read(out)
    geometries = frame[2]
    assert len(geometries) == info["features"] > 0
    from shapely import from_wkb

    assert all(bounds.buffer(0.01).contains(g) for g in from_wkb(geometries))
    with rasterio.open(tmp_path / "classes.tif") as classes:
        assert classes.crs == src.crs and classes.bounds == src.bounds
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_segment_one_band_uint16_with_bbox_in_wgs84(capsys, tmp_path, shared_data, tiny_checkpoint):
    raster = shared_data / "spacenet-buildings" / "sample_geotiff.tif"
    out = tmp_path / "sn.geojson"
    with rasterio.open(raster) as src:
        from rasterio.warp import transform_bounds

        left, bottom, right, top = src.bounds
        sub = transform_bounds(src.crs, "EPSG:4326", left, bottom, (left + right) / 2, (bottom + top) / 2)
    code, _, _ = run(
        capsys,
        "segment",
        raster,
        "--classes",
        "building; road",
        "--model",
        tiny_checkpoint,
        f"--bbox={','.join(map(str, sub))}",
        "--bbox-crs",
        "EPSG:4326",
        "--out",
        out,
        "--quiet",
    )
    assert code == 0
    info = pyogrio.read_info(out)
    assert info["crs"] == "EPSG:32616"
    total = pyogrio.read_info(out)["total_bounds"]
    assert total[0] >= left - 1 and total[2] <= (left + right) / 2 + 1


def test_classes_file_and_models_listing(capsys, tmp_path, shared_data, tiny_checkpoint):
    classes = tmp_path / "classes.txt"
    classes.write_text("building,roof\n# comment\ntree\n")
    code, stdout, _ = run(
        capsys,
        "segment",
        shared_data / "openearthmap" / "oem_koeln_50.tif",
        "--classes-file",
        classes,
        "--model",
        tiny_checkpoint,
        "--out",
        tmp_path / "x.gpkg",
        "--quiet",
        "--layer-per-class",
        "--bbox",
        "346100,5647600,346300,5647800",
    )
    assert code == 0, stdout
    assert set(pyogrio.list_layers(tmp_path / "x.gpkg")[:, 0]) == {"building", "tree", "layer_styles"}
    code, stdout, _ = run(capsys, "models")
    assert code == 0 and "ViT-B-16-openai" in stdout and "missing" in stdout and "tiny-random" in stdout


BAD_INPUTS = [
    (["--bbox", "0,0,10,10"], "does not overlap"),
    (["--bbox", "1,2,3,4", "--bbox-crs", "EPSG:999999"], "EPSG:999999"),
    (["--classes", " ; "], "vocabulary is empty"),
    (["--classes", "building;,"], "is empty"),
    (["--classes", ";".join(f"c{i}" for i in range(1000))], "limit of 256"),
    (["--bands", "1,2,9"], "band"),
    (["--threshold", "2"], "Threshold"),
]


@pytest.mark.parametrize("extra,message", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, shared_data, tiny_checkpoint, extra, message):
    args = [
        "segment",
        shared_data / "openearthmap" / "oem_koeln_50.tif",
        "--model",
        tiny_checkpoint,
        "--out",
        tmp_path / "o.gpkg",
        "--quiet",
    ]
    if "--classes" not in extra:
        args += ["--classes", "building"]
    code, stdout, stderr = run(capsys, *args, *extra)
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.startswith("rsov: ")]
    assert len(lines) == 1 and message.lower() in lines[0].lower(), stderr
    assert not (tmp_path / "o.gpkg").exists()


def test_unreadable_and_all_nodata_rasters(capsys, tmp_path, make_geotiff, tiny_checkpoint):
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    code, _, stderr = run(capsys, "segment", text, "--classes", "x", "--model", tiny_checkpoint, "--quiet")
    assert code == 2 and "GDAL" in stderr
    empty = make_geotiff(np.zeros((3, 64, 64), np.uint8), name="empty.tif", nodata=0)
    code, _, stderr = run(capsys, "segment", empty, "--classes", "x", "--model", tiny_checkpoint, "--quiet")
    assert code == 2 and "nodata" in stderr


def test_unwritable_output_leaves_nothing(capsys, tmp_path, shared_data, tiny_checkpoint):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions: use a path under a file instead
            target = tmp_path / "afile"
            target.write_text("")
            out = target / "o.gpkg"
        else:
            out = locked / "o.gpkg"
        code, _, stderr = run(
            capsys,
            "segment",
            shared_data / "openearthmap" / "oem_koeln_50.tif",
            "--classes",
            "tree",
            "--model",
            tiny_checkpoint,
            "--out",
            out,
            "--quiet",
        )
        assert code == 2 and "Cannot write" in stderr and str(out) in stderr
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_missing_weights_exit_3(capsys, tmp_path, shared_data):
    code, _, stderr = run(
        capsys,
        "segment",
        shared_data / "openearthmap" / "oem_koeln_50.tif",
        "--classes",
        "tree",
        "--out",
        tmp_path / "o.gpkg",
        "--quiet",
    )
    assert code == 3 and "ViT-B-16-openai" in stderr and "rsov models --download" in stderr
    assert not (tmp_path / "o.gpkg").exists()


def test_console_script_shows_progress_and_summary(tmp_path, shared_data, tiny_checkpoint):
    proc = subprocess.run(
        [
            BIN / "rsov",
            "segment",
            shared_data / "openearthmap" / "oem_koeln_50.tif",
            "--classes",
            "building; tree",
            "--model",
            tiny_checkpoint,
            "--out",
            tmp_path / "o.gpkg",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    assert proc.returncode == 0, proc.stderr
    assert "100%" in proc.stderr and "encoding windows" in proc.stderr
    assert proc.stdout.strip().endswith(str(tmp_path / "o.gpkg"))


def test_jbu_upsampler_and_method_options_end_to_end(capsys, tmp_path, shared_data, tiny_checkpoint):
    from rsov.semantic.upsample import JBUStack

    torch.manual_seed(0)
    checkpoint = tmp_path / "jbu64.pt"
    torch.save(JBUStack(64).state_dict(), checkpoint)  # a 64-d stack for the 64-d tiny CLIP
    code, stdout, stderr = run(
        capsys,
        "segment",
        shared_data / "openearthmap" / "oem_koeln_50.tif",
        "--classes",
        "building; tree",
        "--model",
        tiny_checkpoint,
        "--upsampler",
        "jbu",
        "--upsampler-checkpoint",
        checkpoint,
        "--rotations",
        "0,90",
        "--dec",
        "0.5",
        "--templates",
        "remote-sensing",
        "--precision",
        "fast",
        "--long-side",
        "224",
        "--out",
        tmp_path / "o.gpkg",
        "--quiet",
    )
    assert code == 0, stderr
    code, _, stderr = run(
        capsys,
        "segment",
        shared_data / "openearthmap" / "oem_koeln_50.tif",
        "--classes",
        "tree",
        "--model",
        tiny_checkpoint,
        "--upsampler",
        "jbu",
        "--quiet",
    )
    assert code == 2 and "--upsampler-checkpoint" in stderr


def test_precision_fast_says_what_it_chose_and_why(capsys, tmp_path, shared_data, tiny_checkpoint):
    from rsov.precision import cpu_capability

    capability = cpu_capability()
    code, _, stderr = run(
        capsys,
        "segment",
        shared_data / "openearthmap" / "oem_koeln_50.tif",
        "--classes",
        "tree",
        "--model",
        tiny_checkpoint,
        "--precision",
        "fast",
        "--long-side",
        "224",
        "--out",
        tmp_path / "o.gpkg",
    )
    assert code == 0, stderr
    expected = "bf16" if capability.native_bf16 or capability.amx else "fp32"
    assert f"precision fast is {expected} here: " in stderr and capability.describe() in stderr
