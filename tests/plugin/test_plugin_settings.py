"""Settings under rsov/ in QgsSettings, with the environment overriding the backend URL and token file."""

from qgis.core import QgsSettings

from rsov_qgis.backend_client import DEFAULT_URL, InstanceOptions
from rsov_qgis.settings import Settings


def test_defaults_and_round_trip(tmp_path):
    settings = Settings.load()
    assert settings.backend_url == DEFAULT_URL and settings.threshold == 0.3 and settings.resolution == 0.0
    assert settings.results_dir() == tmp_path / "results"  # set by the test fixture
    settings.threshold, settings.model, settings.backend_executable = 0.55, "tiny-random", "/env/bin/rsov"
    settings.save()
    assert QgsSettings().value("rsov/model") == "tiny-random"
    again = Settings.load()
    assert (again.threshold, again.model, again.backend_executable) == (0.55, "tiny-random", "/env/bin/rsov")


def test_environment_wins_and_is_not_stored(monkeypatch):
    settings = Settings.load()
    settings.backend_url = "http://127.0.0.1:9999"
    settings.save()
    monkeypatch.setenv("RSOV_BACKEND_URL", "http://localhost:7777")
    monkeypatch.setenv("RSOV_TOKEN_FILE", "/run/rsov/token")
    loaded = Settings.load()
    assert (loaded.backend_url, loaded.token_file) == ("http://localhost:7777", "/run/rsov/token")
    assert Settings.from_environment("backend_url") == "RSOV_BACKEND_URL" and Settings.from_environment("model") == ""
    loaded.save()
    assert QgsSettings().value("rsov/backend_url") == "http://127.0.0.1:9999"
    assert loaded.client().url == "http://localhost:7777"


def test_instance_options_round_trip_with_their_types():
    settings = Settings.load()
    assert settings.mode == "semantic" and settings.instance_options() == InstanceOptions()
    settings.mode, settings.points_per_side, settings.pred_iou, settings.class_prompts = "instance", 4, -1.0, False
    settings.save()
    QgsSettings().sync()
    again = Settings.load()
    assert again.mode == "instance" and again.class_prompts is False
    assert again.instance_options() == InstanceOptions(points_per_side=4, pred_iou=-1.0, class_prompts=False)
    QgsSettings().setValue("rsov/class_prompts", "true")  # as an .ini file gives it back
    assert Settings.load().class_prompts is True
