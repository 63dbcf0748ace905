"""2D training (`train --layers`): the ladder of (layers, dim) pairs, pooling that matches
Encoder(layers=N), and a real short run whose every pair's loss falls."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from matryoshka import Encoder
from matryoshka.cli import app
from matryoshka.datasets import data_path
from matryoshka.errors import MatryoshkaError
from matryoshka.train.data import load_training_data
from matryoshka.train.layer_loss import LayerDimLoss, ladder, layer_embeddings
from matryoshka.train.model import MatryoshkaModel

DIMS = (384, 256, 128, 64, 32, 16, 8)
SEQ = 24


def test_the_ladder_pairs_the_largest_layers_with_the_largest_dims():
    assert ladder([2, 3, 4, 6], DIMS, 6) == [
        (6, 384), (6, 256), (6, 128), (6, 64), (6, 32), (6, 16), (6, 8), (4, 256), (3, 128), (2, 64),
    ]  # fmt: skip
    assert ladder([3], [384, 64], 6) == [(6, 384), (6, 64), (3, 384)]
    with pytest.raises(MatryoshkaError, match="between 1 and the model's depth 6"):
        ladder([2, 7], DIMS, 6)
    with pytest.raises(MatryoshkaError, match="3 layer counts need at least as many dims"):
        ladder([2, 3, 6], [384, 64], 6)


def test_training_pools_each_layer_as_the_cut_encoder_serves_it(sentences):
    st = MatryoshkaModel(device="cpu").st.eval()
    texts = sentences[:16]
    with torch.no_grad():
        pooled = layer_embeddings(st, st.tokenize(texts), [2, 3, 6])
    for layers in (2, 3, 6):
        served = Encoder(device="cpu", backend="torch", layers=layers).encode(texts)
        np.testing.assert_allclose(pooled[layers].numpy(), served, atol=1e-5)


def pair_losses(st, data) -> dict[str, float]:
    """Every pair's loss on all the training pairs as one batch, without gradients."""
    loss = LayerDimLoss(st, "cosent", ladder([2, 3, 6], DIMS, 6))
    columns = [st.tokenize(data.columns[name]) for name in ("sentence1", "sentence2")]
    with torch.no_grad():
        loss(columns, torch.tensor(data.columns["score"]))
    return loss.last_terms


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "sts200-2d"
    data = load_training_data(data_path("stsb", "sts-train.csv")).head(200)
    before = pair_losses(MatryoshkaModel(max_seq_length=SEQ, device="cpu").st.eval(), data)
    result = CliRunner().invoke(
        app,
        ["train", "--data", str(data_path("stsb", "sts-train.csv")), "--out", str(out), "--limit", "200",
         "--layers", "2,3,6", "--max-seq-length", str(SEQ), "--batch-size", "16"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, data, before


def test_a_2d_run_lowers_every_pair_and_records_its_layers(trained):
    out, data, before = trained
    meta = json.loads((out / "matryoshka.json").read_text())
    assert meta["layers"] == [2, 3, 6] and meta["adapter"] is None
    assert meta["loss"]["pairs"][-2:] == [[3, 256], [2, 128]]
    assert meta["supported_dims"] == list(DIMS)
    after = pair_losses(Encoder(out, device="cpu", backend="torch").model.eval(), data)
    assert set(after) == {f"loss_6x{d}" for d in DIMS} | {"loss_3x256", "loss_2x128"}
    assert all(after[key] < before[key] for key in after), (before, after)
    report = json.loads((out / "report.json").read_text())
    assert {"loss_2x128", "loss_3x256", "loss_6x384"} <= set(report["loss_per_dim"])


def test_a_2d_model_serves_the_layers_it_was_trained_for(trained, sentences):
    out, _, _ = trained
    encoder = Encoder(out, device="cpu", layers=2)
    assert encoder.info.supported_layers == (2, 3, 6)
    assert encoder.encode(sentences[:4], dim=128).shape == (4, 128)
    with pytest.raises(MatryoshkaError, match="layers 4 is not one this model was trained for: 2, 3, 6"):
        Encoder(out, layers=4)
