"""One exception root: every error the plugin raises for the user is an RsovPluginError whose
``str()`` is the message; here each kind is raised by the code that raises it in use."""

import subprocess
import sys
import threading

import pytest
from helpers import result_gpkg_bytes, vocabulary
from osgeo import ogr
from qgis.core import QgsVectorLayer

from rsov_qgis import area, examples, install_backend, review
from rsov_qgis.backend_client import BackendClient, BackendError, JobCancelled, JobRequest
from rsov_qgis.errors import RsovPluginError
from rsov_qgis.examples import ExampleError
from rsov_qgis.extent import ExtentError
from rsov_qgis.install_backend import Cancelled, InstallError
from rsov_qgis.paths import PACKAGE_PARENT
from rsov_qgis.results import ResultError, save_result
from rsov_qgis.review import ReviewError
from rsov_qgis.vocabulary import VocabularyError, validate

ERRORS = (
    BackendError,
    JobCancelled,
    ExampleError,
    ExtentError,
    InstallError,
    Cancelled,
    ResultError,
    ReviewError,
    VocabularyError,
)


@pytest.mark.parametrize("error", ERRORS, ids=lambda error: error.__name__)
def test_every_plugin_error_derives_from_the_root(error):
    assert issubclass(error, RsovPluginError) and error is not RsovPluginError


def _caught(call) -> RsovPluginError:
    """What ``call()`` raised, caught as a caller catches it: by the root alone."""
    try:
        call()
    except RsovPluginError as error:
        return error
    pytest.fail("nothing was raised")


def test_each_kind_is_caught_by_the_root_with_its_message(fake_backend, tmp_path, monkeypatch):
    points = QgsVectorLayer("Point?crs=EPSG:4326", "points", "memory")
    client = BackendClient(fake_backend.url, fake_backend.token_file)
    cancelled = threading.Event()
    cancelled.set()
    monkeypatch.setattr(install_backend, "_CANCELLED", cancelled)  # as SIGTERM leaves it
    caught = [
        _caught(lambda: BackendClient("file:///etc/passwd")),
        _caught(lambda: client.run_job(JobRequest(["tree"], None, None, raster=__file__), is_canceled=lambda: True)),
        _caught(lambda: examples.selected_polygons(points)),
        _caught(lambda: area.selected_polygons(points)),
        _caught(lambda: install_backend.torch_source("cuda", "darwin", offline=False)),
        _caught(install_backend._check_cancelled),
        _caught(lambda: save_result(b"not a GeoPackage", tmp_path / "r.gpkg", vocabulary())),
        _caught(lambda: review.set_status(points, [], "maybe")),
        _caught(lambda: validate([])),
    ]
    assert [type(error) for error in caught] == list(ERRORS)
    assert str(caught[0]) == "The backend URL 'file:///etc/passwd' must start with http:// or https://."
    assert str(caught[2]).startswith("Make a polygon layer active") and str(caught[3]).startswith("Choose the polygon")
    assert "no CUDA build of torch for macOS" in str(caught[4])
    assert str(caught[6]) == "The backend's result is not a readable GeoPackage with a layer 'rsov'."
    assert str(caught[7]) == "Unknown review status 'maybe'." and str(caught[8]).startswith("The vocabulary is empty")


def test_a_result_without_its_fields_says_so_in_one_sentence(tmp_path):
    """A ResultError raised while the result is written is no RuntimeError any more, so it is not
    wrapped into "Writing the review status and style … failed: …" on its way out."""
    path = tmp_path / "backend.gpkg"
    result_gpkg_bytes(path, ["tree"])
    dataset = ogr.Open(str(path), 1)
    layer = dataset.GetLayerByName("rsov")
    layer.DeleteField(layer.FindFieldIndex("score", True))
    layer = dataset = None  # noqa: F841 (closes the file)
    with pytest.raises(ResultError) as info:
        save_result(path.read_bytes(), tmp_path / "out" / "r.gpkg", vocabulary())
    assert str(info.value) == "The backend's result lacks the field(s) score."


def test_the_installer_and_its_root_need_no_qgis():
    """``python3 -m rsov_qgis.install_backend`` runs outside QGIS: importing it (and the exception
    root with it) must not touch QGIS or Qt."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); sys.modules.update(qgis=None, PyQt5=None, PyQt6=None); "
        "import rsov_qgis.install_backend as installer; "
        "assert issubclass(installer.Cancelled, installer.RsovPluginError)"
    )
    run = subprocess.run([sys.executable, "-I", "-c", code, str(PACKAGE_PARENT)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
