"""The backend installer (rsov_qgis/install_backend.py): its failures, each with its message, and
a real installation from the plugin zip (cancelled once, then rerun), started through the
plugin's BackendProcess and used through its client."""

from __future__ import annotations

import shutil
import stat
import subprocess
import time
import zipfile
from collections import namedtuple
from pathlib import Path

import pytest
from conftest import OEM_RASTER, REPO
from helpers import free_port
from osgeo import gdal
from qgis.core import Qgis, QgsVectorLayer

from rsov_qgis import install_backend
from rsov_qgis.backend_client import BackendClient, JobRequest, SegmentOptions
from rsov_qgis.backend_process import BackendProcess
from rsov_qgis.install_backend import InstallError, Request
from rsov_qgis.settings import Settings

PYTHON3 = shutil.which("python3")
START_TIMEOUT_MS = 180000


def fake_python(path: Path, version: str = "3.8.18") -> Path:
    """A script that answers the installer's probe like an old Python."""
    path.write_text(f"#!/bin/sh\necho {version}\necho /opt/old/bin/python\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def run_main(capsys, *args: str) -> tuple[int, str]:
    """The installer in this process: exit code and output."""
    code = install_backend.main(list(args))
    return code, capsys.readouterr().out


def error_of(output: str) -> str:
    message = install_backend.error_message(output)
    assert message is not None, output
    return message


# --- failures ---------------------------------------------------------------------------------
def test_configured_python_missing_or_too_old(tmp_path, capsys):
    code, out = run_main(
        capsys, "--prefix", str(tmp_path / "env"), "--torch", "cpu", "--python", str(tmp_path / "nope")
    )
    assert code == 1
    assert (
        error_of(out) == f"The configured Python {tmp_path / 'nope'} does not exist: rsov needs Python 3.10 or newer."
    )
    old = fake_python(tmp_path / "python3.8")
    code, out = run_main(capsys, "--prefix", str(tmp_path / "env"), "--torch", "cpu", "--python", str(old))
    assert code == 1
    assert error_of(out) == f"The configured Python {old} is 3.8.18: rsov needs Python 3.10 or newer."
    assert not (tmp_path / "env" / "pyvenv.cfg").exists()


def test_no_suitable_python_on_path_says_what_was_tried(tmp_path, capsys, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    old = fake_python(bin_dir / "python3")
    monkeypatch.setenv("PATH", str(bin_dir))
    code, out = run_main(capsys, "--prefix", str(tmp_path / "env"), "--torch", "cpu")
    assert code == 1
    message = error_of(out)
    assert message.startswith(f"No suitable Python found: rsov needs Python 3.10 or newer (tried: {old} (3.8.18))")
    assert "--python" in message


def test_failing_pip_gives_its_last_lines(tmp_path):
    """A wheelhouse without torch, offline: pip fails, the message ends with its last lines."""
    wheelhouse = tmp_path / "wheels"
    wheelhouse.mkdir()
    run = subprocess.run(
        [
            PYTHON3,
            "-m",
            "rsov_qgis.install_backend",
            "--prefix",
            str(tmp_path / "env"),
            "--find-links",
            str(wheelhouse),
            "--offline",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    lines = error_of(run.stdout).splitlines()
    assert (
        lines[0] == "Installing torch 2.14.1 and torchvision 0.29.1 failed (exit code 1); the last lines of its output:"
    )
    assert 1 < len(lines) <= 1 + install_backend.TAIL_LINES
    assert any("torch" in line for line in lines[1:]) and all(line.startswith("  ") for line in lines[1:])
    assert "PROGRESS 15 installing torch 2.14.1 and torchvision 0.29.1" in run.stdout
    assert (tmp_path / "env" / "pyvenv.cfg").is_file()  # a rerun reuses it


def test_not_enough_disk_space(tmp_path, capsys, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(install_backend.shutil, "disk_usage", lambda path: usage(100e9, 99e9, 1.2e9))
    code, out = run_main(capsys, "--prefix", str(tmp_path / "env"), "--torch", "cuda")
    assert code == 1
    assert error_of(out) == (
        f"Not enough disk space for {tmp_path / 'env'}: 1.2 GB free, about 10 GB needed for torch "
        "(the CUDA build from pip's index) and the backend; free some space or choose another folder."
    )
    assert not (tmp_path / "env").exists()


def test_offline_needs_a_wheelhouse_and_other_folders_are_refused(tmp_path, capsys):
    code, out = run_main(capsys, "--prefix", str(tmp_path / "env"), "--offline")
    assert code == 1 and "--find-links" in error_of(out)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("mine")
    code, out = run_main(capsys, "--prefix", str(tmp_path / "docs"), "--torch", "cuda")
    assert (
        error_of(out) == f"{tmp_path / 'docs'} is not empty and not a Python environment: choose a new or empty folder."
    )
    assert (tmp_path / "docs" / "thesis.tex").read_text() == "mine"


def test_a_second_installation_into_the_same_folder_is_refused(tmp_path):
    prefix = tmp_path / "env"
    with install_backend.exclusive(prefix):
        with pytest.raises(InstallError, match="Another installation into .* is running"):
            install_backend.install(Request(prefix, "cuda"))
    with install_backend.exclusive(prefix):
        pass  # released


# --- the torch table and small parts ----------------------------------------------------------------
def test_torch_sources(monkeypatch, capsys):
    monkeypatch.setattr(install_backend, "reachable", lambda url, timeout=3.0: False)
    source = install_backend.torch_source("cpu", "linux", offline=False)
    assert source is install_backend.PYPI_CUDA and source.pip_arguments(False) == []
    assert "https://download.pytorch.org/whl/cpu is not reachable" in capsys.readouterr().out
    offline = install_backend.torch_source("cpu", "linux", offline=True)
    assert offline.index_url == install_backend.CPU_INDEX and offline.pip_arguments(True) == []
    with pytest.raises(InstallError, match="PyTorch's index .*cu130 is not reachable"):
        install_backend.torch_source("cuda", "win32", offline=False)
    with pytest.raises(InstallError, match="no CUDA build of torch for macOS"):
        install_backend.torch_source("cuda", "darwin", offline=False)
    monkeypatch.setattr(install_backend, "reachable", lambda url, timeout=3.0: True)
    assert install_backend.torch_source("cpu", "linux", False).pip_arguments(False) == [
        "--index-url",
        "https://download.pytorch.org/whl/cpu",
    ]
    assert install_backend.torch_source("cpu", "darwin", False).index_url is None


def test_auto_is_cuda_where_nvidia_smi_lists_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(install_backend, "nvidia_gpu", lambda: "GPU 0: NVIDIA H200 (UUID: GPU-1)")
    assert install_backend.choose_flavour("auto") == "cuda"
    monkeypatch.setattr(install_backend, "nvidia_gpu", lambda: "")
    assert install_backend.choose_flavour("auto") == "cpu" and install_backend.choose_flavour("cuda") == "cuda"
    assert "No NVIDIA GPU found" in capsys.readouterr().out


def test_paths_and_protocol():
    assert install_backend.environment_paths(Path("/e"), windows=True) == (
        Path("/e/Scripts/python.exe"),
        Path("/e/Scripts/rsov.exe"),
    )
    assert install_backend.environment_paths(Path("/e"), windows=False) == (Path("/e/bin/python"), Path("/e/bin/rsov"))
    assert install_backend.parse_progress("PROGRESS 40 installing torch") == (40, "installing torch")
    assert install_backend.parse_progress("Collecting torch") is None
    assert install_backend.done_path("DONE /e/bin/rsov") == "/e/bin/rsov"
    assert install_backend.error_message("pip says\nERROR: pip's own\nERROR It failed:\n  why") == "It failed:\n  why"
    assert Request(Path("/e"), "cpu", "/py", "/wheels", True).arguments() == [
        "-m",
        "rsov_qgis.install_backend",
        "--prefix",
        "/e",
        "--torch",
        "cpu",
        "--python",
        "/py",
        "--find-links",
        "/wheels",
        "--offline",
    ]


# --- a real installation ----------------------------------------------------------------------
def _pip_processes_of(prefix: Path) -> list[str]:
    """Command lines of running processes that mention ``prefix`` (Linux's /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if str(prefix) in text and "install_backend" not in text:
            found.append(text)
    return found


def _start_installer(plugin: Path, prefix: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [PYTHON3, "-m", "rsov_qgis.install_backend", "--prefix", str(prefix), "--torch", "auto"],
        cwd=plugin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def installed(plugin_zip, tmp_path_factory):
    """The plugin zip unpacked, and the backend installed from it: once cancelled while pip writes
    torch, then rerun to the end (with the warm pip cache). Yields the paths and the timings."""
    root = tmp_path_factory.mktemp("install")
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(root / "plugin")
    prefix = root / "env"

    started = time.monotonic()
    first = _start_installer(root / "plugin", prefix)
    for line in first.stdout:
        if line.startswith("PROGRESS 40 installing torch"):  # pip is writing the packages
            break
    time.sleep(3)
    install_backend.stop_installer(first.pid)
    rest = first.stdout.read()
    assert first.wait(timeout=60) == install_backend.CANCELLED_EXIT, rest
    assert "ERROR The installation was cancelled" in rest
    assert _pip_processes_of(prefix) == [], "pip went on after the installer was cancelled"
    cancelled_s = time.monotonic() - started

    started = time.monotonic()
    rerun = subprocess.run(
        [PYTHON3, "-m", "rsov_qgis.install_backend", "--prefix", str(prefix), "--torch", "auto"],
        cwd=root / "plugin",
        capture_output=True,
        text=True,
        timeout=1800,
    )
    install_s = time.monotonic() - started
    assert rerun.returncode == 0, rerun.stdout[-5000:] + rerun.stderr
    print(f"\ninstaller: cancelled after {cancelled_s:.0f} s, the rerun took {install_s:.0f} s")
    yield {"root": root, "prefix": prefix, "output": rerun.stdout, "install_s": install_s}


@pytest.mark.install
def test_install_from_the_zip_then_segment_through_the_plugin(installed, qtbot, tmp_path):
    prefix, output = installed["prefix"], installed["output"]
    rsov = install_backend.done_path(output.strip().splitlines()[-1])
    assert rsov == str(prefix / "bin" / "rsov")
    assert f"Reusing the environment in {prefix}." in output  # the cancelled run's environment
    assert "rsov 0.1.0 with torch 2.14.1" in output and "torchvision 0.29.1" in output
    percents = [progress[0] for progress in map(install_backend.parse_progress, output.splitlines()) if progress]
    assert percents == sorted(percents) and percents[-1] == 100
    backend = installed["root"] / "plugin" / "rsov_qgis" / "backend"
    assert sorted(p.name for p in backend.iterdir()) == ["README.md", "pyproject.toml", "rsov"]  # pip built elsewhere
    assert not (prefix / install_backend.SOURCE_COPY).exists()

    process = BackendProcess()
    url, token_file = f"http://127.0.0.1:{free_port()}", tmp_path / "token"
    try:
        with qtbot.waitSignal(process.ready, timeout=START_TIMEOUT_MS) as ready:
            process.start(rsov, url, str(token_file), "tiny-random")
        assert ready.args[0].model == "tiny-random" and ready.args[0].api_version == 1
        client = BackendClient(url, token_file, timeout=60)
        x0, dx, _, y0, _, dy = gdal.Open(str(OEM_RASTER)).GetGeoTransform()
        bbox = (x0 + 100 * dx, y0 + 300 * dy, x0 + 300 * dx, y0 + 100 * dy)  # 200 x 200 px
        job = JobRequest(
            ["building,roof", "tree", "water"], bbox, "EPSG:25832", str(OEM_RASTER), SegmentOptions(threshold=0.0)
        )
        job_id = client.run_job(job)
        (tmp_path / "result.gpkg").write_bytes(client.result_gpkg(job_id))
    finally:
        process.stop()
    layer = QgsVectorLayer(str(tmp_path / "result.gpkg"), "result", "ogr")
    assert layer.isValid() and layer.featureCount() > 0
    assert {f["class"] for f in layer.getFeatures()} <= {"building", "tree", "water"}


# --- the dock -------------------------------------------------------------------------------------
SCREENSHOT = REPO / "docs" / "screenshots" / "install.png"


def _dock_with_installer(iface, qtbot):
    from rsov_qgis.dock import RsovDock

    dock = RsovDock(iface)
    qtbot.addWidget(dock)
    dock.resize(520, 900)
    dock.show_installer()
    return dock


@pytest.fixture
def install_dock(qgis_iface, qtbot, qgis_new_project):
    """The dock with its installer shown."""
    dock = _dock_with_installer(qgis_iface, qtbot)
    yield dock
    dock.shutdown()


def _install(dock, qtbot, timeout_ms: int = 120000) -> None:
    assert dock.install_panel.start()
    assert dock.install_panel.is_running() and not dock.install_panel.install_button.isEnabled()
    qtbot.waitUntil(lambda: not dock.install_panel.is_running(), timeout=timeout_ms)


def test_dock_installer_without_a_suitable_python(install_dock, qgis_iface, qtbot, tmp_path):
    old = fake_python(tmp_path / "python3.8")
    install_dock.install_panel.python_widget.setFilePath(str(old))
    install_dock.install_panel.prefix_widget.setFilePath(str(tmp_path / "env"))
    _install(install_dock, qtbot)
    expected = f"The configured Python {old} is 3.8.18: rsov needs Python 3.10 or newer."
    assert install_dock.install_panel.result_label.text() == expected
    assert install_dock.install_panel.stage_label.text() == "Failed"
    assert "--python " + str(old) in install_dock.install_panel.log.toPlainText()  # the command it ran
    assert [m.split(":", 1)[1] for m in qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Critical)] == [
        f"The backend was not installed: {expected}"
    ]
    assert Settings.load().backend_executable == "" and Settings.load().install_python == str(old)


def test_dock_installer_shows_progress_and_pip_in_its_log(install_dock, qtbot, tmp_path):
    """A real run as far as pip, which finds no torch in an empty wheelhouse (offline)."""
    panel = install_dock.install_panel
    (tmp_path / "wheels").mkdir()
    panel.prefix_widget.setFilePath(str(tmp_path / "env"))
    panel.wheelhouse_widget.setFilePath(str(tmp_path / "wheels"))
    panel.offline_check.setChecked(True)
    panel.torch_combo.setCurrentIndex(panel.torch_combo.findData("cpu"))
    _install(install_dock, qtbot)
    log = panel.log.toPlainText()
    assert "PROGRESS 8 creating the environment in" in log
    assert any(line.startswith("Looking in links:") and str(tmp_path / "wheels") in line for line in log.splitlines())
    assert panel.progress.value() == 15
    assert panel.result_label.text().startswith("Installing torch 2.14.1 and torchvision 0.29.1 failed (exit code 1)")
    assert panel.install_button.isEnabled() and not panel.cancel_button.isEnabled()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert install_dock.grab().save(str(SCREENSHOT))


def test_dock_cancel_stops_the_installer(install_dock, qtbot, tmp_path):
    panel = install_dock.install_panel
    panel.prefix_widget.setFilePath(str(tmp_path / "env"))
    assert panel.start()
    qtbot.waitUntil(lambda: "creating the environment" in panel.log.toPlainText(), timeout=60000)
    panel.cancel()
    qtbot.waitUntil(lambda: not panel.is_running(), timeout=30000)
    assert panel.stage_label.text() == "Cancelled"
    assert panel.result_label.text() == "Cancelled: press Install to continue where it stopped."
    assert _pip_processes_of(tmp_path / "env") == []


@pytest.mark.install
def test_dock_installs_and_start_backend_runs_it(installed, qgis_iface, qtbot, qgis_new_project, tmp_path, monkeypatch):
    """Into the environment installed above (so pip only reinstalls the backend), then Start backend."""
    monkeypatch.setenv("RSOV_BACKEND_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("RSOV_TOKEN_FILE", str(tmp_path / "token"))
    dock = _dock_with_installer(qgis_iface, qtbot)
    try:
        dock.models_panel.set_model("tiny-random")
        dock.install_panel.prefix_widget.setFilePath(str(installed["prefix"]))
        _install(dock, qtbot, timeout_ms=600000)
        rsov = str(installed["prefix"] / "bin" / "rsov")
        assert dock.install_panel.result_label.text().startswith(f"Installed: {rsov}.")
        assert dock.executable_widget.filePath() == rsov and Settings.load().backend_executable == rsov
        dock.start_backend()
        qtbot.waitUntil(
            lambda: "Connected" in dock.status_label.text() or not dock.backend.is_running(), timeout=START_TIMEOUT_MS
        )
        assert "model tiny-random on" in dock.status_label.text()
    finally:
        dock.shutdown()
