"""Vocabulary text format, one-line format, typed classes, colours, legend order, validation and presets."""

import pytest

from rsov_qgis.palette import class_colour
from rsov_qgis.paths import PRESETS
from rsov_qgis.vocabulary import (
    VocabularyClass,
    VocabularyError,
    assign_colors,
    format_vocabulary,
    legend_order,
    list_presets,
    parse_classes_string,
    parse_synonyms,
    parse_typed_classes,
    parse_vocabulary,
    validate,
)


def test_parse_synonyms_cleans_and_deduplicates():
    assert parse_synonyms("  building,  roof ,,house, roof, swimming   pool ") == [
        "building",
        "roof",
        "house",
        "swimming pool",
    ]


def test_text_format_round_trip_keeps_synonyms_and_colours():
    text = "# preset: Test\n\nbuilding, roof  # #E31A1C\n# a comment line\ntree,forest\n"
    classes = parse_vocabulary(text)
    assert [c.synonyms for c in classes] == [["building", "roof"], ["tree", "forest"]]
    assert classes[0].color == "#e31a1c" and classes[0].chosen
    assert classes[1].color == class_colour(2) and not classes[1].chosen  # the palette colour of its place
    assert parse_vocabulary(format_vocabulary(classes)) == classes
    assert format_vocabulary(classes) == "building, roof  # #e31a1c\ntree, forest\n"  # palette colours not frozen
    assert format_vocabulary(classes, "Mine").startswith("# preset: Mine\n")


def test_text_format_is_the_backend_classes_file_format():
    """The backend reads the file with '#' comments stripped: classes and synonyms must survive."""
    text = format_vocabulary([VocabularyClass(["water", "river"], "#1f78b4")])
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]
    assert lines == ["water, river"]


def test_one_line_format():
    classes = parse_classes_string("building,roof; tree , forest ;; water\nroad")
    assert [c.query for c in classes] == ["building,roof", "tree,forest", "water", "road"]
    assert [c.color for c in classes] == [class_colour(k) for k in range(1, 5)]


def test_typed_classes_split_on_semicolons_and_lines():
    classes = parse_typed_classes("a,b; c; d")
    assert [c.synonyms for c in classes] == [["a", "b"], ["c"], ["d"]]
    pasted = parse_typed_classes("# preset: Mine\nbuilding, roof  # #E31A1C\ntree;; water, river\n\n")
    assert [c.query for c in pasted] == ["building,roof", "tree", "water,river"]
    assert [(c.color, c.chosen) for c in pasted] == [("#e31a1c", True), ("", False), ("", False)]
    # the file format keeps ';' inside a class, as the backend's --classes-file does
    assert [c.synonyms for c in parse_vocabulary("a, b; c")] == [["a", "b; c"]]


def test_colours_follow_the_class_id_unless_chosen():
    text = "; ".join(f"class {k}" for k in range(1, 13))
    colours = [c.color for c in parse_classes_string(text)]
    assert colours == [class_colour(k) for k in range(1, 13)] and len(set(colours)) == 12
    classes = assign_colors(
        [
            VocabularyClass(["a"]),
            VocabularyClass([]),
            VocabularyClass(["b"], "#123456"),
            VocabularyClass(["c"], class_colour(9), chosen=False),
            VocabularyClass([]),
        ]
    )
    # rows without words come after the classes (they take no class id) and still differ
    assert [c.color for c in classes] == [class_colour(1), class_colour(4), "#123456", class_colour(3), class_colour(5)]
    assert class_colour(21) != class_colour(1)  # the second cycle is darker (and hatched in styles)


def test_legend_order_puts_present_classes_first_and_keeps_the_class_ids():
    classes = parse_classes_string("a; b; c; d")
    assert [(k, c.name) for k, c in legend_order(classes, {"d", "b", "not in the vocabulary"})] == [
        (2, "b"),
        (4, "d"),
        (1, "a"),
        (3, "c"),
    ]
    assert [k for k, _ in legend_order(classes, [])] == [1, 2, 3, 4]


def test_validate_gives_backend_queries_and_clear_errors():
    assert validate(parse_classes_string("a,b; c")) == ["a,b", "c"]
    with pytest.raises(VocabularyError, match="empty"):
        validate([VocabularyClass([], "#000000")])
    with pytest.raises(VocabularyError, match="unique; repeated: tree"):
        validate(parse_classes_string("tree; Tree,forest"))


def test_presets_cover_the_promised_vocabularies():
    presets = {p.title: p for p in list_presets(PRESETS)}
    assert {"Land cover (OpenEarthMap)", "Land cover (LoveDA)", "Urban objects (iSAID)", "Buildings", "Water"} <= set(
        presets
    )
    oem = presets["Land cover (OpenEarthMap)"].load()
    assert [c.name for c in oem] == ["bareland", "grass", "pavement", "road", "tree", "water", "cropland", "building"]
    assert oem[-1].synonyms == ["building", "roof", "house"] and oem[-1].color == "#de1f07"
    assert len(presets["Urban objects (iSAID)"].load()) == 15
    for preset in presets.values():
        classes = preset.load()
        validate(classes)
        assert len({c.color for c in classes}) == len(classes), f"{preset.title}: colours must differ"
