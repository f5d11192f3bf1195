import pytest

from rsov.errors import InputError
from rsov.semantic.vocabulary import MAX_CLASSES, build_vocabulary, read_classes_file, split_classes


def test_synonyms_and_class_ids():
    vocab = build_vocabulary(
        split_classes(" building, roof ,house; tree,forest;water "), background=("background", "tree")
    )
    assert vocab.names == ["building", "tree", "water"]
    queries, owners = vocab.queries()
    # "tree" is a user class, so it is not also a background synonym
    assert queries == ["building", "roof", "house", "tree", "forest", "water", "background"]
    assert owners == [1, 1, 1, 2, 2, 3, 0]


@pytest.mark.parametrize("text", ["", " ; ;", "\n"])
def test_empty_vocabulary_is_refused(text):
    with pytest.raises(InputError, match="vocabulary is empty"):
        build_vocabulary(split_classes(text))


def test_empty_class_is_refused():
    with pytest.raises(InputError, match="is empty"):
        build_vocabulary(["building", " , ,"])


def test_duplicate_class_names_are_refused():
    with pytest.raises(InputError, match="unique.*building"):
        build_vocabulary(["building,roof", "Building"])


def test_class_limit_is_stated():
    with pytest.raises(InputError, match=f"limit of {MAX_CLASSES}"):
        build_vocabulary([f"class {i}" for i in range(1000)])
    assert len(build_vocabulary([f"class {i}" for i in range(MAX_CLASSES)]).classes) == MAX_CLASSES


def test_classes_file(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# land cover\nbuilding,roof\n\ntree, forest  # green\n", encoding="utf-8")
    assert read_classes_file(path) == ["building,roof", "tree, forest  "]
    with pytest.raises(InputError, match="Cannot read the classes file"):
        read_classes_file(tmp_path / "missing.txt")
