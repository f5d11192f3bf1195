"""The real QGIS desktop under Xvfb with the plugin installed from `make package`'s zip."""

import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from conftest import REPO
from helpers import PERMISSIVE

SCRIPT = Path(__file__).resolve().parent / "desktop_script.py"
SCREENSHOTS = REPO / "docs" / "screenshots"


def run_desktop(plugin_zip: Path, tmp_path: Path, env: dict, raster: Path, output_dir: Path) -> dict:
    """Install the zip into a fresh profile, run QGIS with the desktop script; returns its report."""
    assert shutil.which("qgis") and shutil.which("xvfb-run"), (
        "the qgis binary and xvfb-run are needed (make setup-qgis installs them)"
    )
    profile = tmp_path / "profiles" / "profiles" / "default"
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(profile / "python" / "plugins")
    (profile / "QGIS").mkdir(parents=True)
    (profile / "QGIS" / "QGIS3.ini").write_text(
        f"[PythonPlugins]\nrsov_qgis=true\n\n[rsov]\noutput_dir={output_dir}\n\n[qgis]\ncheckVersion=false\n"
    )
    out = tmp_path / "desktop"
    out.mkdir()
    environment = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
    environment.update(
        env,
        RSOV_DESKTOP_OUT=str(out),
        RSOV_DESKTOP_RASTER=str(raster),
        RSOV_DESKTOP_INSTANCE_OPTIONS=json.dumps(PERMISSIVE),
    )
    command = [
        "xvfb-run",
        "-a",
        "-s",
        "-screen 0 1600x1000x24",
        "qgis",
        "--nologo",
        "--noversioncheck",
        "--profiles-path",
        str(tmp_path / "profiles"),
        "--code",
        str(SCRIPT),
    ]
    run = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=400)
    report_file = out / "report.json"
    assert report_file.exists(), (
        f"QGIS wrote no report (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    )
    report = json.loads(report_file.read_text())
    report["out"] = out
    return report


@pytest.mark.desktop
def test_desktop_dock_segments_and_reviews(plugin_zip, fake_backend, oem_raster, tmp_path):
    report = run_desktop(
        plugin_zip,
        tmp_path,
        {"RSOV_BACKEND_URL": fake_backend.url, "RSOV_TOKEN_FILE": str(fake_backend.token_file)},
        oem_raster,
        tmp_path / "results",
    )
    assert report["errors"] == []
    assert report["plugin_loaded"] and report["dock_visible"]
    assert report["shortcut_clashes"] == []
    assert report["connected"] and "fake-model" in report["status"]
    assert report["task_started"] and report["stage"].startswith("Done: 8 polygons")
    assert len(report["result_layers"]) == 1 and report["result_layers"][0].startswith("oem_koeln_50 ")
    assert report["features"] == 8 and report["renderer"] == "categorizedSymbol"
    assert report["classes"] == sorted(
        ["bareland", "grass", "pavement", "road", "tree", "water", "cropland", "building"]
    )
    assert report["source"].startswith(str(tmp_path / "results"))
    assert report["review_summary"].startswith("7 new, 1 accepted, 0 rejected")
    assert report["area"] == "Visible extent" and report["segment_button"] == "Segment visible extent"
    assert report["estimate"].startswith("Estimate: 1.14 m/px (auto), ")  # the fake's figures
    _assert_instances(report)
    assert report["instance_stage"].startswith("Done: 8 objects")  # the fake's: one per class
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name in ("dock.png", "review.png", "instances.png"):
        shutil.copyfile(report["out"] / name, SCREENSHOTS / name)


def _assert_instances(report: dict) -> None:
    """The accepted feature became an example and went with the instance job on the whole raster."""
    assert report["examples"].endswith(": 1") and report["instance_task_started"] and report["sent_examples"] == 1
    assert report["instance_layer"].startswith("oem_koeln_50 objects ") and "instance_id" in report["instance_fields"]
    assert report["instance_stage"].startswith("Done: ") and report["instance_features"] > 0


@pytest.mark.desktop
@pytest.mark.e2e
def test_desktop_with_the_real_backend(plugin_zip, use_real_backend, oem_raster, tmp_path):
    report = run_desktop(
        plugin_zip,
        tmp_path,
        {
            "RSOV_BACKEND_URL": use_real_backend["url"],
            "RSOV_TOKEN_FILE": str(use_real_backend["token_file"]),
            "RSOV_DESKTOP_THRESHOLD": "0",
        },
        oem_raster,
        tmp_path / "results",
    )
    assert report["errors"] == [] and report["connected"] and "tiny-random" in report["status"]
    assert report["stage"].startswith("Done: ") and report["features"] > 0
    assert set(report["classes"]) <= {"bareland", "grass", "pavement", "road", "tree", "water", "cropland", "building"}
    assert report["renderer"] == "categorizedSymbol"
    assert "1 accepted" in report["review_summary"]
    assert re.match(r"Estimate: [\d.]+ m/px \(auto\), \d+ × \d+ px, \d+ windows?", report["estimate"]), report[
        "estimate"
    ]
    _assert_instances(report)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(report["out"] / "dock.png", SCREENSHOTS / "dock_tiny_random.png")
