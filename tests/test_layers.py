"""Encoder(layers=N): only the first N transformer layers, on torch and ONNX, recorded by indexes,
named by the server; other depths refused unless asked."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from matryoshka import Encoder
from matryoshka.cli import app
from matryoshka.errors import MatryoshkaError
from matryoshka.index import MatryoshkaIndex
from matryoshka.models import resolve_model

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def pooled_from_layer(texts: list[str], layer: int) -> np.ndarray:
    """The reference: the whole model run with its hidden states, layer ``layer`` mean-pooled by hand."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve_model().path
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch, output_hidden_states=True).hidden_states[layer]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    mean = (states * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(mean, dim=-1).numpy()


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_cut_encoder_pools_the_layer_it_stops_at(backend, sentences):
    texts = sentences[:40]
    expected = pooled_from_layer(texts, 3)
    found = Encoder(device="cpu", backend=backend, layers=3).encode(texts)
    assert found.shape == (40, 384)
    np.testing.assert_allclose(found, expected, atol=2e-5)
    whole = Encoder(device="cpu", backend=backend).encode(texts)
    assert np.sum(whole * found, axis=1).mean() < 0.9  # another embedding, not the whole model's


def test_layers_are_validated_named_and_fingerprinted():
    assert resolve_model().depth == 6
    for bad, message in [(0, "out of range: the model has 1 to 6"), (7, "out of range"),
                         ("3", "must be an integer")]:  # fmt: skip
        with pytest.raises(MatryoshkaError, match=message):
            Encoder(layers=bad)
    cut, whole = Encoder(backend="onnx", layers=3), Encoder(backend="onnx", layers=6)
    assert (cut.name, cut.cut_layers) == ("all-MiniLM-L6-v2@3-layers", 3)
    assert (whole.name, whole.cut_layers, whole.fingerprint) == (
        "all-MiniLM-L6-v2", None, Encoder(backend="onnx").fingerprint)  # fmt: skip
    assert cut.fingerprint == cut.fingerprint_at(3) != cut.fingerprint_at(None) == whole.fingerprint


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sentences):
    root = tmp_path_factory.mktemp("layers")
    lines = [json.dumps({"_id": f"d{i}", "text": s}) for i, s in enumerate(sentences[:120])]
    (root / "c.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_an_index_records_its_depth_and_refuses_queries_from_another(corpus, sentences):
    built = invoke("index", "build", corpus / "c.jsonl", "--layers", "3", "--out", corpus / "idx3")
    assert built.exit_code == 0, built.output
    index = MatryoshkaIndex.open(corpus / "idx3")
    assert index.info()["source"]["layers"] == "3"
    assert index.encoder.cut_layers == 3  # the recorded depth, found again on open
    expected = Encoder(layers=3).encode(sentences[:120])
    top = index.search(sentences[7], k=1, funnel="384")
    assert top.ids[0][0] == "d7" and abs(top.scores[0][0] - 1) < 1e-3
    stored = index.search(expected[:5], k=1, funnel="384")
    assert [row[0] for row in stored.ids] == ["d0", "d1", "d2", "d3", "d4"]
    for other in (Encoder(), Encoder(layers=2)):
        with pytest.raises(MatryoshkaError, match="cannot search an index of vectors"):
            index.use_encoder(other)
    index.use_encoder(Encoder(layers=2), any_layers=True)
    assert index.encoder.cut_layers == 2
    asymmetric = index.search(sentences[7], k=3, funnel="384")
    by_vector = index.search(Encoder(layers=2).encode(sentences[7]), k=3, funnel="384")
    assert list(asymmetric.ids[0]) == list(by_vector.ids[0])  # the query encoded at 2 layers


def test_cli_encode_and_search_take_layers(corpus, sentences):
    out = corpus / "v.npy"
    (corpus / "t.txt").write_text("\n".join(sentences[:10]) + "\n")
    done = invoke("encode", corpus / "t.txt", "--layers", "2", "--dim", "64", "--out", out)
    assert done.exit_code == 0, done.output
    np.testing.assert_allclose(np.load(out), Encoder(layers=2).encode(sentences[:10], dim=64), atol=1e-6)
    built = invoke("index", "build", corpus / "c.jsonl", "--out", corpus / "idx6")
    assert built.exit_code == 0, built.output
    refused = invoke("encode", corpus / "t.txt", "--layers", "9", "--out", out)
    assert refused.exit_code == 2 and "layers 9 is out of range" in refused.output
    found = invoke("search", corpus / "idx6", sentences[3], "--query-layers", "3", "-k", "1", "--json")
    assert found.exit_code == 0, found.output
    query = Encoder(layers=3).encode(sentences[3])
    assert (
        json.loads(found.output)["results"][0]["id"]
        == MatryoshkaIndex.open(corpus / "idx6").search(query, k=1).ids[0][0]
    )
    ray = invoke("index", "build", corpus / "c.jsonl", "--layers", "3", "--engine", "ray", "-o", corpus / "r")
    assert ray.exit_code == 2 and "--layers applies to a corpus encoded here" in ray.output


def test_eval_scores_the_cut_model():
    from matryoshka.datasets import load_stsb
    from matryoshka.eval.metrics import spearman

    done = invoke("eval", "--task", "stsb", "--layers", "2", "--dims", "64", "--baselines", "", "--json")
    assert done.exit_code == 0, done.output
    series = json.loads(done.stdout)["series"]
    pairs, encoder = load_stsb("test"), Encoder(layers=2)
    first, second = encoder.encode(pairs.first, dim=64), encoder.encode(pairs.second, dim=64)
    expected = 100 * spearman(np.sum(first * second, axis=1), pairs.scores)
    assert [(s["name"], round(s["rows"][0]["score"], 4)) for s in series] == [
        ("all-MiniLM-L6-v2@2-layers", round(expected, 4))
    ]


def test_a_cut_model_saved_by_sentence_transformers_loads_with_its_depth(tmp_path, sentences):
    from sentence_transformers import SentenceTransformer

    from matryoshka.layers import keep_layers

    st = SentenceTransformer(str(resolve_model().path), device="cpu", local_files_only=True)
    keep_layers(st, 3).save(str(tmp_path / "cut3"))
    info = resolve_model(tmp_path / "cut3")
    assert (info.full_dim, info.depth, info.supported_layers) == (384, 3, None)
    found = Encoder(tmp_path / "cut3", backend="torch").encode(sentences[:8])
    np.testing.assert_allclose(found, Encoder(backend="torch", layers=3).encode(sentences[:8]), atol=1e-6)
