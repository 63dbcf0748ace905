import numpy as np
import pytest
from typer.testing import CliRunner

from matryoshka import Encoder, MatryoshkaError, truncate
from matryoshka.adapter import Adapter, data_hash, mean_last_rotation, pca_rotation
from matryoshka.cli import app
from matryoshka.eval.metrics import recall_at_k
from matryoshka.index.search import exact_search
from matryoshka.models import ADAPTER_FILE
from matryoshka.train.adapter import (
    fit_adapter,
    held_out_split,
    neighbour_recall_by_dim,
    sentence_queries,
    source_mrr,
)

PREFIX_DIMS = (256, 128, 64, 32, 16, 8)


def neighbour_recall(vectors: np.ndarray, adapted: np.ndarray, dim: int) -> float:
    """How many of each vector's 10 full-dim neighbours (itself excluded) its prefix search finds."""
    _, exact = exact_search(vectors, vectors, 11)
    _, found = exact_search(adapted, adapted, 11, dim)
    return recall_at_k(found[:, 1:], exact[:, 1:])


@pytest.fixture(scope="module")
def fitted(full_vectors) -> Adapter:
    """The trained map itself (no held-out selection), which the tests below check."""
    return fit_adapter(
        full_vectors, "linear", epochs=30, neighbours=10, random_candidates=64, seed=0, holdout=0
    )


def test_orthogonal_adapter_keeps_full_dim_rankings(full_vectors, fitted):
    """The default linear adapter is affine: centred on the fitting mean, then a rotation, so at the
    full dim every similarity and ranking is that of the centred vectors."""
    assert np.allclose(fitted.weight.T @ fitted.weight, np.eye(384), atol=1e-4)
    np.testing.assert_allclose(fitted.mean, full_vectors.mean(axis=0), atol=1e-6)
    centred = truncate(full_vectors - fitted.mean)
    adapted = fitted.transform(full_vectors)
    np.testing.assert_allclose(adapted @ adapted.T, centred @ centred.T, atol=2e-5)
    exact_scores, _ = exact_search(centred, centred, 20)
    _, ids = exact_search(adapted, adapted, 20)
    original_scores = np.take_along_axis(centred @ centred.T, ids, 1)
    np.testing.assert_allclose(original_scores, exact_scores, atol=2e-5)  # same top 20, up to exact ties


def test_objective_lowers_prefix_mismatch_at_every_dim(full_vectors, fitted):
    """Fitted on 300 real sentences, every short prefix keeps more full-dim neighbours (of the centred
    vectors, the adapter's frame) than truncating the centred vectors; the shortest also more than its
    start, centred PCA (which, on 300 vectors, keeps almost all at 256: the held-out choice's case)."""
    adapted, centred = fitted.transform(full_vectors), truncate(full_vectors - fitted.mean)
    pca = fit_adapter(full_vectors, "pca").transform(full_vectors)
    for dim in PREFIX_DIMS:
        raw, start, ours = (neighbour_recall(centred, v, dim) for v in (centred, pca, adapted))
        assert ours > raw + 0.05, (dim, raw, ours)  # measured: 0.85 -> 0.95 at 256, 0.27 -> 0.63 at 8
        assert dim > 16 or ours > start + 0.05, (dim, start, ours)  # 0.66 -> 0.73 at 16, 0.52 -> 0.63 at 8
    assert neighbour_recall(centred, adapted, 384) > 0.999  # a rotation: the full dim is unchanged


def test_adapter_file_round_trips(tmp_path, full_vectors, fitted):
    written = fitted.save(tmp_path / "out")
    assert written.name == ADAPTER_FILE
    loaded = Adapter.load(tmp_path / "out")
    np.testing.assert_array_equal(loaded.transform(full_vectors), fitted.transform(full_vectors))
    assert loaded.hash == fitted.hash and loaded.kind == "linear"
    assert loaded.meta["dims"] == [384, 256, 128, 64, 32, 16, 8] and loaded.meta["input_dim"] == 384
    assert loaded.meta["data_hash"] == fitted.meta["data_hash"] and "neighbour KL" in loaded.meta["objective"]


def test_mismatched_input_dim_or_source_is_refused(full_vectors, fitted):
    with pytest.raises(MatryoshkaError, match="have 256 dims, the adapter expects 384"):
        fitted.transform(full_vectors[:, :256])
    bad = full_vectors[:4].copy()
    bad[1, 3] = np.nan
    with pytest.raises(MatryoshkaError, match="NaN"):
        fitted.transform(bad)
    other = Adapter(
        fitted.kind, fitted.mean, fitted.weight, meta={"source": {"model": "e5", "fingerprint": "x"}}
    )
    with pytest.raises(MatryoshkaError, match="fitted for model 'e5'"):
        Encoder(device="cpu", adapter=other)
    narrow = Adapter("pca", np.zeros(8, np.float32), np.eye(8, dtype=np.float32))
    with pytest.raises(MatryoshkaError, match="adapter expects 8-dim vectors"):
        Encoder(device="cpu", adapter=narrow)


def test_encoder_applies_adapter_like_by_hand(tmp_path, encoder, sentences, full_vectors, fitted):
    fitted.meta["source"] = {"model": encoder.info.name, "fingerprint": encoder.info.fingerprint}
    path = fitted.save(tmp_path / "adapter.npz")
    adapted_encoder = Encoder(device="cpu", adapter=path)
    adapted_encoder._model = encoder.model  # share the loaded network; the adapter is what is tested
    out = adapted_encoder.encode(sentences[:16], dim=64)
    np.testing.assert_allclose(out, truncate(fitted.transform(full_vectors[:16]), 64), atol=1e-5)
    assert adapted_encoder.fingerprint != encoder.fingerprint  # cached vectors of the two never mix


def test_adapter_saved_in_model_directory_is_found(tmp_path, encoder, fitted):
    model_dir = tmp_path / "minilm-copy"
    for file in encoder.info.path.rglob("*"):
        if file.is_file():
            target = model_dir / file.relative_to(encoder.info.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(file)
    fitted.meta["source"] = {"model": encoder.info.name, "fingerprint": encoder.info.fingerprint}
    fitted.save(model_dir)
    found = Encoder(model_dir, device="cpu")
    assert found.adapter is not None and found.adapter.hash == fitted.hash
    assert Encoder(model_dir, device="cpu", adapter=False).adapter is None


def test_pca_and_select_are_rotations_and_permutations(full_vectors):
    pca = fit_adapter(full_vectors, "pca")
    variances = ((full_vectors - pca.mean) @ pca.weight).var(axis=0)
    assert np.all(np.diff(variances) <= 1e-6)  # components by decreasing variance
    select = fit_adapter(full_vectors, "select", epochs=4, random_candidates=32)
    assert (
        sorted(select.weight.sum(axis=0)) == [1.0] * 384 and sorted(select.weight.sum(axis=1)) == [1.0] * 384
    )
    raw = fit_adapter(full_vectors, "raw")
    np.testing.assert_allclose(raw.transform(full_vectors), full_vectors, atol=1e-6)


def test_sentence_queries_come_from_the_texts():
    text = "Title words here. The first sentence has six words. Short one. The last one is long enough too."
    queries = sentence_queries([text], per_text=2)
    assert len(queries) == 2 and all(q in text for q in queries)


def test_cli_fit_and_apply_on_provider_vectors(tmp_path, full_vectors, fitted):
    runner = CliRunner()
    np.save(tmp_path / "api.npy", full_vectors)
    result = runner.invoke(
        app,
        [
            "adapt",
            "fit",
            "--vectors",
            str(tmp_path / "api.npy"),
            "--kind",
            "pca",
            "--out",
            str(tmp_path / "a"),
        ],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["adapt", "apply", str(tmp_path / "a"), str(tmp_path / "api.npy"), str(tmp_path / "o.npy")]
    )
    assert result.exit_code == 0, result.output
    expected = Adapter.load(tmp_path / "a").transform(full_vectors)
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), expected)


def test_cli_refuses_bad_input_with_exit_2(tmp_path, full_vectors, fitted):
    runner = CliRunner()
    (tmp_path / "empty.txt").write_text("\n\n")
    np.save(tmp_path / "narrow.npy", full_vectors[:, :100])
    nan = full_vectors.copy()
    nan[0, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    fitted.meta["source"] = {"model": "some-api-model", "fingerprint": "0123"}
    fitted.save(tmp_path / "other")
    cases = {
        "is empty": ["adapt", "fit", "--corpus", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "x")],
        "NaN": ["adapt", "fit", "--vectors", str(tmp_path / "nan.npy"), "--out", str(tmp_path / "x")],
        "have 100 dims": ["adapt", "apply", str(tmp_path / "other"), str(tmp_path / "narrow.npy"), "o.npy"],
        "fitted for model 'some-api-model'": [
            *("adapt", "apply", str(tmp_path / "other"), str(tmp_path / "narrow.npy"), "o.npy"),
            *("--model", "all-MiniLM-L6-v2"),
        ],
        "dimension 500 is out of range": [
            *("adapt", "fit", "--vectors", str(tmp_path / "narrow.npy"), "--dims", "500,8"),
            *("--out", str(tmp_path / "x")),
        ],
    }
    for message, args in cases.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)


def test_mlp_adapter_round_trips_with_its_residual(tmp_path, full_vectors):
    mlp = fit_adapter(full_vectors[:200], "mlp", epochs=6, random_candidates=32, holdout=0)
    assert mlp.mlp is not None and np.abs(mlp.mlp[2]).max() > 0  # the residual branch was trained
    loaded = Adapter.load(mlp.save(tmp_path / "mlp.npz"))
    np.testing.assert_array_equal(loaded.transform(full_vectors), mlp.transform(full_vectors))
    linear_part = truncate((full_vectors - mlp.mean) @ mlp.weight)
    assert not np.allclose(loaded.transform(full_vectors), linear_part, atol=1e-6)


def test_supervised_pairs_term_pulls_pairs_together_at_short_prefixes(full_vectors):
    """With (query, positive) pairs, each query's positive ranks higher among the positives at dim 16."""
    queries, positives = full_vectors[:150], full_vectors[150:300]

    def mean_rank(adapter: Adapter) -> float:
        q, p = truncate(adapter.transform(queries), 16), truncate(adapter.transform(positives), 16)
        scores = q @ p.T
        return float(np.mean((scores > np.diag(scores)[:, None]).sum(axis=1)))

    options = {"epochs": 8, "random_candidates": 32, "seed": 0}
    plain = fit_adapter(full_vectors, "linear", **options)
    supervised = fit_adapter(full_vectors, "linear", pairs=(queries, positives), pair_weight=1.0, **options)
    assert "InfoNCE" in supervised.meta["objective"]
    assert mean_rank(supervised) < mean_rank(plain) - 5
    with pytest.raises(MatryoshkaError, match="as many queries as positives"):
        fit_adapter(full_vectors, "linear", pairs=(queries, positives[:10]))


def test_held_out_selection_keeps_the_candidate_best_on_the_held_out_rows(full_vectors):
    """Every candidate's held-out recall is recomputed by hand; the kept map is the best of them."""
    dims = (384, 64, 16, 8)
    adapter = fit_adapter(full_vectors, "linear", dims, epochs=6, random_candidates=32, holdout=0.2)
    selection = adapter.meta["selection"]
    fit_rows, held = held_out_split(300, 0.2)
    assert selection["held_out"] == len(held) == 60 and selection["trained_on"] == len(fit_rows) == 240
    assert not set(fit_rows) & set(held) and adapter.meta["fitted_on"] == 300
    mean, axes = pca_rotation(full_vectors[fit_rows])
    start = Adapter("pca", mean, axes)  # the default start: centred PCA, judged in the centred frame
    recalls = neighbour_recall_by_dim(start, full_vectors, held, dims, mean=mean)
    assert selection["recall_by_dim"]["pca"] == {d: round(r, 4) for d, r in recalls.items()}
    assert selection["frame"] == "centred" and set(selection["mean_recall"]) == {"pca", "trained"}
    means = selection["mean_recall"]
    assert means[selection["chosen"]] == max(means.values())
    assert means[selection["chosen"]] >= means["pca"]  # never worse than its own starting point
    kept = neighbour_recall_by_dim(adapter, full_vectors, held, dims, mean=mean)
    assert round(float(np.mean(list(kept.values()))), 4) == means[selection["chosen"]]
    assert selection["recall_by_dim"]["pca"][384] == selection["recall_by_dim"]["trained"][384] == 1.0
    uncentred = neighbour_recall_by_dim(
        start, full_vectors, held, dims
    )  # raw neighbours: centring moves them
    assert uncentred[384] < 1.0


def test_selection_can_be_limited_to_the_rotations(full_vectors):
    adapter = fit_adapter(full_vectors, "linear", (384, 8), epochs=2, random_candidates=32,
                          candidates=("start", "trained"), init="mean-last")  # fmt: skip
    selection = adapter.meta["selection"]
    assert set(selection["mean_recall"]) == {"start", "trained"} and not adapter.mean.any()
    assert selection["frame"] == "input" and selection["recall_by_dim"]["start"][384] == 1.0
    with pytest.raises(MatryoshkaError, match="candidates must be among"):
        fit_adapter(full_vectors, "linear", candidates=("best",))


def test_centring_changes_full_dim_scores_as_intended(full_vectors):
    """Centred PCA at the full dim scores the cosine of the centred vectors (queries centred alike),
    not the raw cosine; the uncentred start rotation keeps the raw cosine exactly."""
    pca = fit_adapter(full_vectors, "pca")
    centred = full_vectors - full_vectors.mean(axis=0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    adapted = pca.transform(full_vectors)
    np.testing.assert_allclose(adapted @ adapted.T, centred @ centred.T, atol=2e-5)
    assert np.abs(adapted @ adapted.T - full_vectors @ full_vectors.T).max() > 0.1
    start = Adapter("linear", np.zeros(384, np.float32), mean_last_rotation(full_vectors))
    start = start.transform(full_vectors)
    np.testing.assert_allclose(start @ start.T, full_vectors @ full_vectors.T, atol=2e-5)


def test_sentence_queries_skip_one_sentence_texts():
    texts = ["A dog runs across the green field", "Two men. A dog runs across the field now."]
    assert sentence_queries(texts) == ["A dog runs across the field now."]


def test_cli_fit_reads_the_field_and_beir_titles(tmp_path, encoder):
    import json

    records = [
        {"_id": "1", "title": "Cats", "text": "A cat sleeps on the warm mat.", "body": "A kitten naps."},
        {"_id": "2", "title": "", "text": "Dogs bark at night.", "body": "A puppy yelps."},
        {"_id": "3", "text": "Birds sing in the morning.", "body": "A sparrow chirps."},
    ]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
    runner = CliRunner()
    expected = {
        (): ["Cats A cat sleeps on the warm mat.", "Dogs bark at night.", "Birds sing in the morning."],
        ("--title-field", ""): [r["text"] for r in records],
        ("--field", "body"): ["Cats A kitten naps.", "A puppy yelps.", "A sparrow chirps."],
    }
    for n, (extra, texts) in enumerate(expected.items()):
        out = tmp_path / f"a{n}"
        args = ["adapt", "fit", "--corpus", str(corpus), "--kind", "pca", "--out", str(out), *extra]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert Adapter.load(out).meta["data_hash"] == data_hash(encoder.encode_full(texts)), extra


def _offset_corpus(offset: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """200 documents sharing a common direction of size ``offset``, and one query per document
    that lacks it (a claim over abstracts, say): its own deviation plus noise."""
    rng = np.random.default_rng(seed)
    deviation = rng.normal(size=(200, 16)).astype(np.float32)
    common = np.zeros(16, np.float32)
    common[0] = 4 * offset
    queries = truncate(deviation + rng.normal(size=deviation.shape).astype(np.float32))
    return truncate(deviation + common), queries


@pytest.mark.parametrize("offset, frame", [(1, "input"), (3, "centred")])
def test_pseudo_queries_decide_whether_the_adapter_centres(offset, frame):
    """The fit centres only when the queries find their own documents no worse centred on the corpus
    mean (mean reciprocal rank at the full dim); otherwise it is a rotation of the input."""
    documents, queries = _offset_corpus(offset)
    rows = np.arange(200)
    fit_rows, _ = held_out_split(200, 0.1)
    mrr = source_mrr(documents, queries, rows, documents[fit_rows].mean(axis=0))
    assert (mrr["centred"] < mrr["input"]) == (frame == "input"), mrr
    centred = truncate(documents - documents[fit_rows].mean(axis=0))
    by_hand = truncate(queries - documents[fit_rows].mean(axis=0)) @ centred.T
    own = by_hand[rows, rows]
    assert mrr["centred"] == round(float(np.mean(1 / (1 + (by_hand > own[:, None]).sum(1)))), 4)
    adapter = fit_adapter(documents, "linear", (16, 8, 4), queries=queries, query_sources=rows, epochs=1,
                          random_candidates=16)  # fmt: skip
    selection = adapter.meta["selection"]
    assert selection["frame"] == frame and selection["source_mrr"] == mrr
    assert set(selection["mean_recall"]) == ({"start", "trained"} if frame == "input" else {"pca", "trained"})
    assert adapter.mean.any() == (frame == "centred")
