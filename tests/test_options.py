"""The options table is the one source of the method options: every CLI flag, API field, evaluation
option and request default is tested equal to its row here."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

from rsov import options as table
from rsov.batch import EngineSpec as BatchEngineSpec
from rsov.cli import build_parser
from rsov.engine import SegmentRequest, load_engine, request_from_options
from rsov.errors import InputError
from rsov.evaluation.options import EngineSpec, Variant, apply_option, option_values, options_for
from rsov.models import DEFAULT_MODEL
from rsov.service.schemas import JobOptions


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _actions(name: str) -> dict[str, argparse.Action]:
    return {a.dest: a for a in _subparser(name)._actions}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def test_every_cli_row_is_a_segment_flag_with_the_rows_default_and_help():
    actions = _actions("segment")
    for option in table.options_for("cli"):
        action = actions[option.name]
        expected = [option.flag, *("--" + a.replace("_", "-") for a in option.aliases)]
        if option.kind == "bool" and option.default:
            expected = ["--no-" + option.name.replace("_", "-")]
        assert action.option_strings == expected, option.name
        assert action.default == option.default, option.name
        assert option.help in action.help.replace("%%", "%"), option.name
        assert list(action.choices or ()) == list(option.choices), option.name


def test_batch_takes_every_row_but_instance_modes():
    actions = _actions("batch")
    for option in table.options_for("cli"):
        assert (option.name in actions) == (option.stage != "instance"), option.name


def test_the_api_options_are_the_api_rows_with_their_defaults_and_ranges():
    fields = JobOptions.model_fields
    assert list(fields) == [o.name for o in table.options_for("api")]
    schema = JobOptions.model_json_schema()["properties"]
    for option in table.options_for("api"):
        assert fields[option.name].default == _plain(option.default), option.name
        assert schema[option.name]["description"] == option.help
    assert schema["threshold"]["minimum"] == 0 and schema["threshold"]["maximum"] == 1
    assert schema["resolution"]["anyOf"][0]["exclusiveMinimum"] == 0
    assert schema["rotations"]["maxItems"] == 4
    assert schema["refine"]["enum"] == ["none", "sam"]
    # engine rows are the server's own choice, never a job's
    assert not {"model", "sam", "upsampler", "window"} & set(fields)


def test_every_request_default_equals_its_row():
    """The request dataclasses' own defaults are what a row not given leaves: they must agree."""
    request = SegmentRequest(raster="", classes=("a",))
    holders = {
        "request": request,
        "features": request.features,
        "scoring": request.scoring,
        "instance": request.instance,
    }
    for option in table.OPTIONS:
        if option.stage == "engine":
            continue
        assert _plain(getattr(holders[option.stage], option.attribute)) == _plain(option.default), option.name


def test_every_engine_row_is_a_field_of_the_engine_specs_and_load_engine():
    load = inspect.signature(load_engine).parameters
    for option in (o for o in table.OPTIONS if o.stage == "engine"):
        assert option.attribute in {f.name for f in dataclasses.fields(EngineSpec)}, option.name
        assert option.attribute in {f.name for f in dataclasses.fields(BatchEngineSpec)}, option.name
        assert load[option.attribute].default == option.default, option.name
    assert table.BY_NAME["model"].default == DEFAULT_MODEL


def test_evaluation_offers_the_eval_rows_by_task():
    assert options_for("semantic") == table.options_for("eval", "semantic")
    names = {o.name for o in options_for("instance")}
    assert {"object_threshold", "tile", "points_per_side"} <= names
    assert "object_threshold" not in {o.name for o in options_for("semantic")}
    assert "refine" not in names


def test_one_mapping_from_names_to_request_fields():
    request = request_from_options(
        {
            "object_threshold": 0.7,
            "pred_iou": 0.5,
            "resolution": 2.0,
            "dec_keep": 0.4,
            "simplify": 0.0,
            "rotations": [0, 90],
        },
        raster="r.tif",
        classes=("a",),
    )
    assert request.instance.score_threshold == 0.7 and request.instance.pred_iou_thresh == 0.5
    assert request.features.resolution_m == 2.0 and request.features.rotations == (0, 90)
    assert request.scoring.dec_keep == 0.4 and request.simplify_px == 0.0
    variant = apply_option(Variant(EngineSpec(), SegmentRequest(raster="", classes=("a",))), "object_threshold", "0.6")
    assert variant.request.instance.score_threshold == 0.6
    assert option_values(variant, "instance")["object_threshold"] == 0.6


@pytest.mark.parametrize(
    "name,text,value",
    [
        ("rotations", "0,90", (0, 90)),
        ("rotations", "0+180", (0, 180)),
        ("background", "none", ()),
        ("background", "water, sea", ("water", "sea")),
        ("dec_keep", "off", None),
        ("class_prompts", "false", False),
        ("long_side", "448", 448),
        ("threshold", "0.25", 0.25),
    ],
)
def test_text_forms_parse_the_same_for_flags_and_sweeps(name, text, value):
    assert table.BY_NAME[name].parse(text) == value
    args = (
        _subparser("segment").parse_args(["r.tif", "--classes", "a", f"--{name.replace('_', '-')}", text])
        if table.BY_NAME[name].kind != "bool"
        else None
    )
    if args is not None:
        assert getattr(args, name) == value


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("threshold", "2", "threshold must be >= 0 and <= 1"),
        ("resolution", "0", "resolution must be > 0"),
        ("rotations", "0,90,180,270,0", "rotations must be a list of >= 1 and <= 4 items"),
        ("refine", "crf", "refine must be one of none, sam"),
        ("tile", "ten", "'ten' is not a valid value for tile"),
        ("threshold", "nan", "threshold must be a finite number"),
    ],
)
def test_out_of_range_values_name_the_option_and_its_range(name, text, message):
    with pytest.raises(InputError) as caught:
        table.BY_NAME[name].parse(text)
    assert message in str(caught.value)


def test_the_alias_of_a_renamed_row_still_works():
    args = _subparser("segment").parse_args(["r.tif", "--classes", "a", "--dec", "0.39"])
    assert args.dec_keep == 0.39
    assert table.find("dec").name == "dec_keep"
    with pytest.raises(InputError, match="Unknown option 'decc'"):
        table.find("decc")
