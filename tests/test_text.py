import pytest
import torch
import torch.nn.functional as F

from rsov.errors import InputError
from rsov.models import TINY_MODEL, load_model
from rsov.semantic.text import TEMPLATE_SETS, ClipTextEmbedder, resolve_templates


@pytest.fixture(scope="module")
def tiny():
    with pytest.warns(UserWarning):
        return load_model(TINY_MODEL)


def test_template_sets():
    assert len(TEMPLATE_SETS["openai"]) == 80
    assert TEMPLATE_SETS["openai"][0] == "a bad photo of a {}."
    assert "A satellite image of a {}." in TEMPLATE_SETS["remote-sensing"]


def test_embedding_is_normalised_mean_of_normalised_templates(tiny, tmp_path):
    templates = TEMPLATE_SETS["remote-sensing"]
    embedder = ClipTextEmbedder(tiny, templates, cache_root=tmp_path)
    got = embedder.embed(["swimming pool"])
    with torch.no_grad():
        per = F.normalize(
            tiny.model.encode_text(tiny.tokenizer([t.format("swimming pool") for t in templates])), dim=-1
        )
    expected = F.normalize(per.mean(0), dim=-1)
    assert got.shape == (1, 64)
    assert torch.allclose(got[0], expected, atol=1e-6)


def test_trimmed_text_encoding_equals_open_clip(tiny):
    from rsov.semantic.text import encode_text_trimmed

    tokens = tiny.tokenizer(["a", "an aerial image of a large swimming pool next to a red roof", "tree"])
    with torch.no_grad():
        assert torch.allclose(encode_text_trimmed(tiny.model, tokens), tiny.model.encode_text(tokens), atol=1e-5)


def test_disk_cache_survives_a_restart_and_edits_reembed_one_class(tiny, tmp_path):
    first = ClipTextEmbedder(tiny, TEMPLATE_SETS["remote-sensing"], cache_root=tmp_path)
    a = first.embed(["building", "tree", "water"])
    assert first.encoded_queries == 3
    again = ClipTextEmbedder(tiny, TEMPLATE_SETS["remote-sensing"], cache_root=tmp_path)  # a new process, same disk
    b = again.embed(["building", "tree", "solar panel"])
    assert again.encoded_queries == 1  # only the edited class went through the text tower
    assert torch.equal(a[:2], b[:2])
    other = ClipTextEmbedder(tiny, TEMPLATE_SETS["plain"], cache_root=tmp_path)  # other templates, other key
    other.embed(["building"])
    assert other.encoded_queries == 1


def test_unwritable_cache_does_not_fail(tiny, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    embedder = ClipTextEmbedder(tiny, TEMPLATE_SETS["plain"], cache_root=blocker)
    assert embedder.embed(["road"]).shape == (1, 64)


def test_template_file(tmp_path):
    good = tmp_path / "t.txt"
    good.write_text("an orthophoto of {}.\n\na drone image of a {}.\n")
    assert resolve_templates(str(good)) == ("an orthophoto of {}.", "a drone image of a {}.")
    bad = tmp_path / "bad.txt"
    bad.write_text("no placeholder\n")
    with pytest.raises(InputError, match="one template per line"):
        resolve_templates(str(bad))
    with pytest.raises(InputError, match="Unknown template set"):
        resolve_templates("imagenet-21k")
