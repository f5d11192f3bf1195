import time

import pytest
import torch

from rsov import models
from rsov.errors import InputError, WeightsMissingError


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RSOV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RSOV_OFFLINE", "1")


def test_tiny_random_is_deterministic_and_loud():
    with pytest.warns(UserWarning, match="MEANINGLESS"):
        a = models.load_model(models.TINY_MODEL)
    with pytest.warns(UserWarning):
        b = models.load_model(models.TINY_MODEL)
    for (name, pa), (_, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert not a.model.training


def test_saved_checkpoint_loads_through_the_real_path(tmp_path):
    with pytest.warns(UserWarning):
        tiny = models.load_model(models.TINY_MODEL)
    path = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), path)
    loaded = models.load_model(f"{models.TINY_ARCH}@{path}")
    assert loaded.weights_id.startswith(f"{models.TINY_ARCH}@{path}")
    image = torch.rand(1, 3, 224, 224)
    tokens = loaded.tokenizer(["a swimming pool"])
    with torch.no_grad():
        assert torch.allclose(loaded.model.encode_image(image), tiny.model.encode_image(image))
        assert torch.allclose(loaded.model.encode_text(tokens), tiny.model.encode_text(tokens))


def test_missing_weights_fail_fast_with_a_useful_message():
    started = time.perf_counter()
    with pytest.raises(WeightsMissingError) as err:
        models.load_model("ViT-B-16-openai")
    message = str(err.value)
    assert time.perf_counter() - started < 10
    assert "ViT-B-16-openai" in message
    assert "open_clip_pytorch_model.bin" in message
    assert "rsov models --download ViT-B-16-openai" in message


def test_missing_local_checkpoint_names_the_file(tmp_path):
    with pytest.raises(WeightsMissingError, match="RemoteCLIP-ViT-B-32.pt"):
        models.load_model("RemoteCLIP-ViT-B-32")
    with pytest.raises(WeightsMissingError, match="nowhere.pt"):
        models.load_model(f"ViT-B-32@{tmp_path / 'nowhere.pt'}")


def test_unknown_names_are_input_errors():
    with pytest.raises(InputError, match="Unknown CLIP model 'clip-9000'"):
        models.load_model("clip-9000")
    with pytest.raises(InputError, match="Unknown CLIP architecture 'NotAnArch'"):
        models.load_model("NotAnArch@/tmp/x.pt")
    with pytest.raises(InputError, match="Unknown SAM model 'sam-vit-x'"):
        models.load_sam("sam-vit-x")
    with pytest.raises(InputError, match="Unknown SAM architecture 'vit_q'"):
        models.load_sam("vit_q@/tmp/x.pth")


def test_missing_sam_weights_name_the_file():
    with pytest.raises(WeightsMissingError, match="sam_vit_b_01ec64.pth"):
        models.load_sam("sam-vit-b")


def test_weights_found_in_the_hub_cache_layout(tmp_path):
    # Place a file where open_clip's hub download would have put it; rsov must find it offline.
    repo = models.cache_dir() / "open_clip" / "models--timm--vit_base_patch16_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    torch.save({"not": torch.zeros(1)}, snapshot / "open_clip_pytorch_model.bin")
    spec = models.resolve_spec("ViT-B-16-openai")
    assert models.find_weights(spec) == snapshot / "open_clip_pytorch_model.bin"
    present = {row["name"]: row["weights_present"] for row in models.list_models()}
    assert present["ViT-B-16-openai"] and not present["ViT-L-14-openai"]
    # A wrong file there is reported as such, not as a crash.
    with pytest.raises(InputError, match="Could not load weights"):
        models.load_model("ViT-B-16-openai")
