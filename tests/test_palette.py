"""One colour per class everywhere: the backend's palette and the plugin's are the same table."""

import importlib.util
from pathlib import Path

from rsov import palette

PLUGIN_PALETTE = Path(__file__).resolve().parents[1] / "rsov_qgis" / "palette.py"


def _plugin_palette():
    spec = importlib.util.spec_from_file_location("plugin_palette", PLUGIN_PALETTE)  # no QGIS needed for this module
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_plugin_colours_every_class_as_the_backend_does():
    plugin = _plugin_palette()
    assert plugin.COLOURS == palette.COLOURS and plugin.SHADE_PER_CYCLE == palette.SHADE_PER_CYCLE
    assert [plugin.class_colour(k) for k in range(0, 70)] == [palette.class_colour(k) for k in range(0, 70)]


def test_colours_are_distinct_then_cycle_darker():
    n = len(palette.COLOURS)
    first = [palette.class_colour(k) for k in range(1, n + 1)]
    assert len(set(first)) == n == 20 and palette.class_colour(0) == "#000000"
    second = [palette.class_colour(k) for k in range(n + 1, 2 * n + 1)]
    assert not set(first) & set(second) and len(set(first + second)) == 2 * n
    assert palette.class_rgb(1) == (0xE6, 0x9F, 0x00) and palette.class_rgb(n + 1) == (138, 95, 0)
    assert palette.cycle(n) == 0 and palette.cycle(n + 1) == 1
