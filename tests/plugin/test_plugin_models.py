"""The model manager on the Backend tab, against the real backend (`rsov serve --model
RemoteCLIP-ViT-B-32`, offline, with an empty cache of its own, so it starts without its model):
the model list, the not-ready status, a download that fails offline, an import refused by its
digest, and an import that makes the backend ready.

The tests of this module run in order on one backend: the last one gives it its weights.
"""

import hashlib
import re
import subprocess

import pytest
from conftest import REPO, serving
from qgis.core import Qgis

from rsov_qgis.dock import RsovDock
from rsov_qgis.settings import Settings

pytestmark = pytest.mark.e2e
MODEL = "RemoteCLIP-ViT-B-32"
SAM_SHA256 = "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"  # sam_vit_b_01ec64.pth
TRANSFER_TIMEOUT_MS = 180000
SCREENSHOT = REPO / "docs" / "screenshots" / "models.png"


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    folder = tmp_path_factory.mktemp("no_weights")
    with serving(
        folder, "--model", MODEL, env={"RSOV_CACHE_DIR": str(folder / "cache"), "RSOV_OFFLINE": "1"}
    ) as served:
        yield dict(served, cache=folder / "cache")


@pytest.fixture
def dock(backend, qgis_iface, qtbot, qgis_new_project, monkeypatch):
    monkeypatch.setenv("RSOV_BACKEND_URL", backend["url"])
    monkeypatch.setenv("RSOV_TOKEN_FILE", str(backend["token_file"]))
    widget = RsovDock(qgis_iface)
    qtbot.addWidget(widget)
    widget.resize(520, 900)
    widget.tabs.setCurrentWidget(widget.backend_page)
    yield widget
    widget.shutdown()


def _items(combo) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


def _transfer(dock, qtbot, start) -> str:
    """Run ``start()`` (a download or import) to its end; the outcome line."""
    panel = dock.models_panel
    with qtbot.waitSignal(panel.transferred, timeout=TRANSFER_TIMEOUT_MS):
        start()
        assert not panel.download_button.isEnabled() and not panel.import_button.isEnabled()
    assert panel.import_button.isEnabled()
    return panel.info_label.text()


def test_not_ready_model_list_offline_download_and_a_refused_import(dock, backend, qgis_iface, qtbot, tmp_path):
    assert not dock.check_backend()
    status = dock.status_label.text()
    assert f"Not ready: Weights for model '{MODEL}'" in status and f"checkpoints/{MODEL}.pt" in status
    assert "use Download or Import weights file… on the Backend tab." in status
    assert "rsov models" not in status  # no command-line advice in the dock
    assert not dock.segment_button.isEnabled()
    assert qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Critical) == []  # Critical: the status line says it
    panel = dock.models_panel
    clip = _items(panel.model_combo)
    assert f"{MODEL} — missing, size unknown" in clip and "ViT-B-16-openai — missing, size unknown" in clip
    assert "tiny-random — no weights needed" in clip and not any(item.startswith("sam-") for item in clip)
    weights = _items(panel.weights_combo)
    assert "sam-vit-b — missing, 375 MB" in weights and not any(item.startswith("tiny-random") for item in weights)
    # Download and Import act on the backend's own model
    assert panel.model() == MODEL and panel.weights_model() == MODEL and Settings.load().model == MODEL

    outcome = _transfer(dock, qtbot, panel.download)
    assert outcome.startswith(f"Weights for model '{MODEL}'") and "not available offline" in outcome
    assert f"{MODEL}.pt" in outcome and "rsov models" not in outcome  # the first sentence shows
    assert "rsov models --download" in panel.info_label.toolTip()  # the whole message as its tooltip
    assert "Not ready" in dock.status_label.text()  # health was checked again: still no weights
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert dock.grab().save(str(SCREENSHOT))

    wrong = tmp_path / "sam_vit_b_01ec64.pth"
    wrong.write_bytes(b"not the weights" * 1000)
    panel.set_weights_model("sam-vit-b")
    outcome = _transfer(dock, qtbot, lambda: panel.import_file(str(wrong)))
    digest = hashlib.sha256(wrong.read_bytes()).hexdigest()
    assert outcome == (
        f"{wrong} has sha256 {digest}, not the {SAM_SHA256} of the real file: it is damaged, "
        "truncated or another file, and was not used."
    )
    assert "sam-vit-b — missing, 375 MB" in _items(panel.weights_combo)


@pytest.fixture(scope="module")
def random_vit_b_32(tmp_path_factory):
    """An open_clip ViT-B-32 state dict with random weights (half precision: 300 MB, not 600)."""
    path = tmp_path_factory.mktemp("weights") / "vit_b_32.pt"
    subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "python"),
            "-c",
            "import sys, open_clip, torch; model = open_clip.create_model('ViT-B-32', pretrained=None); "
            "torch.save({k: v.half() for k, v in model.state_dict().items()}, sys.argv[1])",
            str(path),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return path


def test_importing_the_weights_makes_the_backend_ready(dock, backend, random_vit_b_32, qtbot):
    assert not dock.check_backend() and not dock.segment_button.isEnabled()
    panel = dock.models_panel
    size = random_vit_b_32.stat().st_size
    outcome = _transfer(dock, qtbot, lambda: panel.import_file(str(random_vit_b_32)))
    assert outcome == f"Imported the weights of {MODEL}: {backend['cache'] / 'checkpoints' / f'{MODEL}.pt'}"
    assert re.fullmatch(rf"\d+ of {size / 1e6:.0f} MB", panel.progress.format())  # the bytes were shown
    assert f"{MODEL} — present, {size / 1e6:.0f} MB" in _items(panel.model_combo)
    # the dock asked the backend again once its own model had its weights
    assert f"Connected: rsov 0.1.0, model {MODEL} on " in dock.status_label.text()
    assert dock.segment_button.isEnabled()
