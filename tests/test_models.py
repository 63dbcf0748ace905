import json
import shutil

import pytest

from matryoshka import DimensionError, Encoder
from matryoshka.models import DEFAULT_MODEL, list_models, resolve_model


def test_default_model_metadata_is_read_from_its_directory():
    info = resolve_model()
    assert (info.name, info.full_dim, info.supported_dims) == (DEFAULT_MODEL, 384, None)
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2").path == info.path


def test_local_model_declares_supported_dims(tmp_path, monkeypatch):
    model_dir = tmp_path / "models" / "nested"
    shutil.copytree(resolve_model().path, model_dir)
    (model_dir / "matryoshka.json").write_text(
        json.dumps({"full_dim": 384, "supported_dims": [384, 128, 32]})
    )
    monkeypatch.setenv("MATRYOSHKA_MODELS", str(tmp_path / "models"))
    assert [m.name for m in list_models()] == [DEFAULT_MODEL, "nested"]
    encoder = Encoder("nested", device="cpu")
    assert encoder.check_dim(128) == 128
    with pytest.raises(DimensionError, match="supported dims: 384, 128, 32"):
        encoder.check_dim(64)


def test_an_index_records_a_model_it_can_find_again(tmp_path, monkeypatch):
    """A built-in model's own directory keeps its name; another directory is recorded absolute, so an
    index built with `--model ./mine` opens its model from any folder."""
    from matryoshka.index import create_index, open_index

    info = resolve_model()
    assert resolve_model(str(info.path)).name == DEFAULT_MODEL and info.reference == DEFAULT_MODEL
    shutil.copytree(info.path, tmp_path / "mine")
    monkeypatch.chdir(tmp_path)
    index = create_index(tmp_path / "idx", "mine")
    index.add(texts=["a cat sat on the mat", "stock prices fell"])
    assert index.info()["source"]["model"] == str(tmp_path / "mine")
    monkeypatch.chdir("/")
    found = open_index(tmp_path / "idx").search("a kitten on a rug", k=1, funnel="384")
    assert found.records()[1] == [["a cat sat on the mat"]]
