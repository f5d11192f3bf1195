"""Vocabulary text format, one-line format, colours, validation and presets."""

import pytest

from rsov_qgis.paths import PRESETS
from rsov_qgis.vocabulary import (
    PALETTE,
    VocabularyClass,
    VocabularyError,
    format_vocabulary,
    list_presets,
    parse_classes_string,
    parse_synonyms,
    parse_vocabulary,
    validate,
)


def test_parse_synonyms_cleans_and_deduplicates():
    assert parse_synonyms("  building,  roof ,,house, roof, swimming   pool ") == [
        "building", "roof", "house", "swimming pool"]


def test_text_format_round_trip_keeps_synonyms_and_colours():
    text = "# preset: Test\n\nbuilding, roof  # #E31A1C\n# a comment line\ntree,forest\n"
    classes = parse_vocabulary(text)
    assert [c.synonyms for c in classes] == [["building", "roof"], ["tree", "forest"]]
    assert classes[0].color == "#e31a1c"
    assert classes[1].color.startswith("#") and classes[1].color != "#e31a1c"  # a free palette colour
    assert parse_vocabulary(format_vocabulary(classes)) == classes
    assert format_vocabulary(classes, "Mine").startswith("# preset: Mine\n")


def test_text_format_is_the_backend_classes_file_format():
    """The backend reads the file with '#' comments stripped: classes and synonyms must survive."""
    text = format_vocabulary([VocabularyClass(["water", "river"], "#1f78b4")])
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]
    assert lines == ["water, river"]


def test_one_line_format():
    classes = parse_classes_string("building,roof; tree , forest ;; water\nroad")
    assert [c.query for c in classes] == ["building,roof", "tree,forest", "water", "road"]
    assert [c.color for c in classes] == list(PALETTE[:4])


def test_validate_gives_backend_queries_and_clear_errors():
    assert validate(parse_classes_string("a,b; c")) == ["a,b", "c"]
    with pytest.raises(VocabularyError, match="empty"):
        validate([VocabularyClass([], "#000000")])
    with pytest.raises(VocabularyError, match="unique; repeated: tree"):
        validate(parse_classes_string("tree; Tree,forest"))


def test_presets_cover_the_promised_vocabularies():
    presets = {p.title: p for p in list_presets(PRESETS)}
    assert {"Land cover (OpenEarthMap)", "Land cover (LoveDA)", "Urban objects (iSAID)", "Buildings", "Water"} <= set(presets)
    oem = presets["Land cover (OpenEarthMap)"].load()
    assert [c.name for c in oem] == ["bareland", "grass", "pavement", "road", "tree", "water", "cropland", "building"]
    assert oem[-1].synonyms == ["building", "roof", "house"] and oem[-1].color == "#de1f07"
    assert len(presets["Urban objects (iSAID)"].load()) == 15
    for preset in presets.values():
        classes = preset.load()
        validate(classes)
        assert len({c.color for c in classes}) == len(classes), f"{preset.title}: colours must differ"
