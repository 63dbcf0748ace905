import json

import numpy as np
import pytest

from matryoshka import Encoder
from matryoshka.errors import DimensionError, MatryoshkaError
from matryoshka.eval.plots import PLOT_FILES
from matryoshka.eval.report import to_markdown, write_report
from matryoshka.eval.retention import (
    BASELINES,
    coarse_to_fine_violations,
    evaluate,
    fit_pca,
    register_baseline,
)
from matryoshka.eval.tasks import BeirTask
from matryoshka.quantize import bytes_per_vector

DIMS = [384, 64, 8]


@pytest.fixture(scope="module")
def beir_report(encoder, beir_dir):
    return evaluate([encoder], BeirTask(beir_dir), DIMS, baselines=["truncate", "pca"], base_encoder=encoder)


def test_report_rows(beir_report):
    model, pca = beir_report["series"]
    assert (model["name"], model["kind"], pca["name"]) == (
        "all-MiniLM-L6-v2",
        "model",
        "pca (all-MiniLM-L6-v2)",
    )
    assert [row["dim"] for row in model["rows"]] == DIMS
    full = model["rows"][0]
    assert full["retention"] == pytest.approx(100.0)
    assert full["gap_ratio"] == pytest.approx(1.0)
    for row in model["rows"]:
        assert row["retention"] == pytest.approx(100 * row["score"] / model["reference_score"])
        assert row["score"] == row["metrics"]["ndcg@10"]
        assert row["bytes"] == {p: bytes_per_vector(row["dim"], p) for p in ("float32", "int8", "binary")}
        assert row["search_ms_per_query"] > 0
    # the truncate baseline of the base model is its own row, so it is noted, not repeated
    assert any("is the all-MiniLM-L6-v2 row itself" in note for note in beir_report["notes"])
    assert pca["reference_score"] == model["reference_score"]


def test_coarse_to_fine_flags_a_dim_below_a_smaller_one():
    rows = [
        {"dim": 64, "score": 70.0},
        {"dim": 32, "score": 71.0},
        {"dim": 16, "score": 71.5},
        {"dim": 8, "score": 60.0},
    ]
    violations = coarse_to_fine_violations(rows)
    assert [(v["dim"], v["beaten_by_dim"]) for v in violations] == [(64, 16), (32, 16)]
    assert rows[0]["below_smaller_dim"] == 16 and "below_smaller_dim" not in rows[2]


def test_pca_is_a_centred_rotation_sorted_by_variance():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(500, 3)) * [1.0, 5.0, 0.2] + [3.0, -1.0, 2.0]
    transform = fit_pca(data)
    out = transform(data)
    centred = data - data.mean(0)
    np.testing.assert_allclose(out @ out.T, centred @ centred.T, atol=1e-3)  # full dim: a rotation
    variances = out.var(0)
    assert variances[0] > variances[1] > variances[2]
    assert variances[0] == pytest.approx(centred.var(0).max(), rel=0.05)
    assert fit_pca(data[:2])(data).shape == (500, 3)  # fewer vectors than dims still gives every axis


def test_registered_baseline_gets_its_row(encoder, beir_dir):
    register_baseline("reversed", lambda fit_vectors: lambda vectors: vectors[:, ::-1].copy())
    try:
        report = evaluate([encoder], BeirTask(beir_dir), [384, 8], ["reversed"], base_encoder=encoder)
    finally:
        del BASELINES["reversed"]
    model, reversed_ = report["series"]
    assert reversed_["name"] == "reversed (all-MiniLM-L6-v2)"
    assert reversed_["rows"][0]["score"] == pytest.approx(model["rows"][0]["score"])  # same vectors at 384
    assert reversed_["rows"][1]["score"] != model["rows"][1]["score"]  # the last 8 dims, not the first


def test_second_run_does_no_encoding(tmp_path, monkeypatch, encoder, beir_dir):
    monkeypatch.setenv("MATRYOSHKA_CACHE", str(tmp_path))
    calls = []
    original = encoder.encode_full
    monkeypatch.setattr(encoder, "encode_full", lambda texts: calls.append(len(texts)) or original(texts))
    first = evaluate([encoder], BeirTask(beir_dir), DIMS, ["pca"], base_encoder=encoder)
    assert calls == [10, 40]  # queries and corpus, each once, for every dim and the baseline
    second = evaluate([encoder], BeirTask(beir_dir), DIMS, ["pca"], base_encoder=encoder)
    assert calls == [10, 40]
    assert [r["score"] for r in second["series"][1]["rows"]] == [
        r["score"] for r in first["series"][1]["rows"]
    ]


def test_dims_the_model_does_not_support(tmp_path, encoder, beir_dir):
    import shutil

    from matryoshka.models import resolve_model

    shutil.copytree(resolve_model().path, tmp_path / "m")
    (tmp_path / "m" / "matryoshka.json").write_text('{"supported_dims": [384, 64]}')
    with pytest.raises(DimensionError, match="dimension 8 is not supported"):
        evaluate([Encoder(tmp_path / "m")], BeirTask(beir_dir), DIMS)
    with pytest.raises(DimensionError, match="out of range"):
        evaluate([encoder], BeirTask(beir_dir), [512])
    with pytest.raises(MatryoshkaError, match="unknown baseline 'svd'"):
        evaluate([encoder], BeirTask(beir_dir), DIMS, ["svd"])


def test_report_files_and_plots(tmp_path, beir_report):
    written = write_report(beir_report, tmp_path)
    assert {p.name for p in written} == {"report.json", "report.md", *PLOT_FILES}
    for name in PLOT_FILES:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    loaded = json.loads((tmp_path / "report.json").read_text())
    assert loaded["series"][0]["rows"][1]["score"] == pytest.approx(
        beir_report["series"][0]["rows"][1]["score"]
    )
    markdown = to_markdown(beir_report)
    assert markdown.count("| all-MiniLM-L6-v2 |") == 3 and markdown.count("| pca (all-MiniLM-L6-v2) |") == 3
