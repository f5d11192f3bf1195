import functools
import http.server
import json
import threading
import time
from pathlib import Path

import open_clip
import pytest
import torch

from rsov import models, weights
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
    for (name, pa), (_, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
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


# ---- OpenAI formats, QuickGELU, relative paths ----------------------------------------------


def _features(model, seed: int = 0) -> torch.Tensor:
    image = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.encode_image(image)


def test_openai_format_checkpoint_loads_with_quick_gelu(tmp_path):
    """OpenAI's state dicts (with their extra entries) need QuickGELU: the features must match
    open_clip's ViT-B-16-quickgelu on identical random weights, not the GELU build's."""
    torch.manual_seed(0)
    reference = open_clip.create_model("ViT-B-16-quickgelu").eval()
    state = reference.state_dict()
    state.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    torch.save(state, tmp_path / "openai-format.pt")
    loaded = models.load_model(f"ViT-B-16@{tmp_path / 'openai-format.pt'}")
    assert loaded.activation == "QuickGELU (the file is in OpenAI's format)"
    expected = _features(reference)
    assert torch.allclose(_features(loaded.model), expected, atol=1e-5)
    gelu = open_clip.create_model("ViT-B-16").eval()
    gelu.load_state_dict(reference.state_dict())
    assert (_features(gelu) - expected).abs().max() > 1e-4  # the activation matters: GELU would be wrong


@pytest.fixture
def gelu_tiny_arch(tmp_path):
    """A tiny architecture whose config says GELU, so only the file can ask for QuickGELU."""
    config = json.loads((Path(models.__file__).parent / "model_configs" / f"{models.TINY_ARCH}.json").read_text())
    config.pop("quick_gelu")
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "tiny-gelu.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    return "tiny-gelu"


def test_openai_torchscript_archive_loads_with_quick_gelu(tmp_path, gelu_tiny_arch):
    torch.manual_seed(1)
    source = open_clip.create_model(gelu_tiny_arch, force_quick_gelu=True).eval()
    traced = torch.jit.trace(
        source, (torch.rand(1, 3, 224, 224), torch.zeros(1, 77, dtype=torch.long)), check_trace=False
    )
    traced.save(str(tmp_path / "ViT-B-16.pt"))  # OpenAI ships its models as TorchScript archives
    loaded = models.load_model(f"{gelu_tiny_arch}@{tmp_path / 'ViT-B-16.pt'}")
    assert "OpenAI's format" in loaded.activation
    assert torch.allclose(_features(loaded.model), _features(source), atol=1e-6)


def test_gelu_from_the_config_is_said_not_silent(tmp_path, caplog):
    torch.manual_seed(2)
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), tmp_path / "plain.pt")
    with caplog.at_level("WARNING"):
        loaded = models.load_model(f"ViT-B-32@{tmp_path / 'plain.pt'}")
    assert loaded.activation.startswith("GELU (ViT-B-32's config)") and "ViT-B-32-quickgelu@FILE" in loaded.activation
    assert "ViT-B-32-quickgelu@FILE" in caplog.text


def test_a_relative_checkpoint_path_is_resolved_from_the_current_folder(tmp_path, monkeypatch, tiny_checkpoint):
    path = Path(tiny_checkpoint.split("@", 1)[1])
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "mine.pt").write_bytes(path.read_bytes())
    monkeypatch.chdir(tmp_path / "work")
    loaded = models.load_model(f"{models.TINY_ARCH}@mine.pt")
    assert loaded.spec.checkpoint == str(tmp_path / "work" / "mine.pt")


def test_a_file_that_is_no_checkpoint_is_an_input_error(tmp_path):
    (tmp_path / "page.pt").write_text("<html>proxy login</html>")
    with pytest.raises(InputError, match="not a checkpoint"):
        models.load_model(f"{models.TINY_ARCH}@{tmp_path / 'page.pt'}")


# ---- import and download, verified --------------------------------------------------------


def _registered_tiny(monkeypatch, tiny_checkpoint, **spec):
    """A registry entry for the tiny model's weights file, with its real digest unless given."""
    path = Path(tiny_checkpoint.split("@", 1)[1])
    spec = models.ModelSpec(
        "tiny-file",
        models.TINY_ARCH,
        "tiny weights from a file",
        checkpoint="tiny-file.pt",
        **{"sha256": weights.sha256_file(path), **spec},
    )
    monkeypatch.setitem(models.MODELS, spec.name, spec)
    return spec, path


def test_import_identifies_the_file_by_its_digest(monkeypatch, tiny_checkpoint):
    spec, path = _registered_tiny(monkeypatch, tiny_checkpoint)
    assert not {r["name"]: r["weights_present"] for r in models.list_models()}["tiny-file"]
    imported, target = models.import_weights(path)
    assert imported == spec and target == models.cache_dir() / "checkpoints" / "tiny-file.pt"
    row = {r["name"]: r for r in models.list_models()}["tiny-file"]
    assert row["weights_present"] and row["size_bytes"] == path.stat().st_size
    assert models.load_model("tiny-file").weights_id.startswith("tiny-file-tiny-file.pt")


def test_import_refuses_a_file_whose_digest_does_not_match(monkeypatch, tiny_checkpoint):
    _, path = _registered_tiny(monkeypatch, tiny_checkpoint, sha256="0" * 64)
    with pytest.raises(weights.DigestMismatchError, match="not the 0000"):
        models.import_weights(path, "tiny-file")
    with pytest.raises(weights.DigestMismatchError):
        models.import_weights(path, "sam-vit-b")  # the real SAM ViT-B digest is known
    assert not (models.cache_dir() / "checkpoints").exists() or not any((models.cache_dir() / "checkpoints").iterdir())
    with pytest.raises(InputError, match="not a weights file rsov knows"):
        models.import_weights(path)


def test_import_without_a_known_digest_must_load_into_the_architecture(tiny_checkpoint):
    path = Path(tiny_checkpoint.split("@", 1)[1])
    with pytest.raises(InputError, match="into ViT-B-32"):
        models.import_weights(path, "RemoteCLIP-ViT-B-32")


@pytest.fixture
def file_server(tmp_path):
    """A real HTTP server on localhost serving tmp_path/served."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_is_verified_and_shows_its_bytes(monkeypatch, tiny_checkpoint, file_server):
    served, url = file_server
    monkeypatch.delenv("RSOV_OFFLINE")
    path = Path(tiny_checkpoint.split("@", 1)[1])
    (served / "tiny.pt").write_bytes(path.read_bytes())
    spec, _ = _registered_tiny(monkeypatch, tiny_checkpoint, source_url=f"{url}/tiny.pt")
    seen = []
    target = models.download_weights(spec, lambda done, total: seen.append((done, total)))
    assert target.read_bytes() == path.read_bytes()
    assert seen[-1] == (path.stat().st_size, path.stat().st_size) and len(seen) > 1

    bad = models.ModelSpec(
        "tiny-bad",
        models.TINY_ARCH,
        "wrong digest",
        checkpoint="tiny-bad.pt",
        source_url=f"{url}/tiny.pt",
        sha256="f" * 64,
    )
    with pytest.raises(weights.DigestMismatchError):
        models.download_weights(bad)
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny-file.pt"]  # nothing half-written left
