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
