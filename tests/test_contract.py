"""The plugin and the backend share only the HTTP/JSON contract: what the plugin sends, the backend accepts.

``rsov_qgis.backend_client`` is standard library only, so the backend's own request model (the one its
OpenAPI schema is made from) can validate the plugin's bodies here, every field set.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root holds rsov_qgis/

from rsov.service.schemas import JobOptions, JobRequest  # noqa: E402
from rsov_qgis import backend_client as plugin  # noqa: E402

MASK = {
    "type": "FeatureCollection",
    "crs": {"type": "name", "properties": {"name": "EPSG:25832"}},
    "features": [
        {
            "type": "Feature",
            "properties": {},
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
        }
    ],
}


def every_option() -> plugin.SegmentOptions:
    return plugin.SegmentOptions(
        threshold=0.4, resolution=0.7, bands=[3, 2, 1], templates="remote-sensing", background=["background", "grass"]
    )


@pytest.mark.parametrize("instance", [None, plugin.InstanceOptions()])
def test_every_body_the_plugin_sends_is_a_valid_job(instance):
    examples = {**MASK, "features": [{**MASK["features"][0], "properties": {"class": "building"}}]}
    body = plugin.JobRequest(
        classes=["building,roof", "tree"],
        bbox=(0.0, 0.0, 1.0, 1.0),
        bbox_crs="EPSG:25832",
        raster="/data/a.tif",
        options=every_option(),
        instance=instance,
        examples=examples,
        mask=MASK,
    ).to_json()
    job = JobRequest.model_validate(body)
    assert job.mask == MASK and job.options.resolution == 0.7 and job.mode == ("instance" if instance else "semantic")
    sent = set(body["options"])
    assert sent <= set(JobOptions.model_fields)  # no option the backend would refuse as unknown
    assert sent >= {"threshold", "resolution", "bands", "templates", "background"}


def test_the_plugin_leaves_resolution_to_the_backend_by_default():
    body = plugin.JobRequest(classes=["tree"], bbox=None, bbox_crs=None, raster="/data/a.tif").to_json()
    assert "resolution" not in body["options"] and "long_side" not in body["options"]
    job = JobRequest.model_validate(body)
    assert job.options.resolution is None and job.options.long_side is None  # auto, from the raster
