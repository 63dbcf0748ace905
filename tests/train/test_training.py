"""End-to-end: a real 1-epoch run on 200 STS-B pairs, the saved model, and --resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from matryoshka import Encoder
from matryoshka.datasets import data_path
from matryoshka.errors import DimensionError
from matryoshka.models import list_models
from matryoshka.train.data import load_training_data
from matryoshka.train.loop import TrainConfig, build_loss, train
from matryoshka.train.model import MatryoshkaModel

DIMS = (384, 256, 128, 64, 32, 16, 8)
SEQ = 24


def per_dim_loss(config: TrainConfig, st, data) -> dict[str, float]:
    """Loss of every dim on all the training pairs as one batch (no distillation), without gradients."""
    loss = build_loss(config, st, data)
    loss.distill = 0.0
    with torch.no_grad():
        first = st.encode(data.columns["sentence1"], convert_to_tensor=True, batch_size=100)
        second = st.encode(data.columns["sentence2"], convert_to_tensor=True, batch_size=100)
        loss.loss_from_embeddings([first, second], torch.tensor(data.columns["score"]))
    return loss.last_terms


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "sts200"
    config = TrainConfig(
        data=str(data_path("stsb", "sts-train.csv")),
        out=str(out),
        limit=200,
        epochs=1,
        batch_size=16,
        lr=2e-5,
        max_seq_length=SEQ,
        evaluate=False,
        logging_steps=4,
    )
    data = load_training_data(config.data).head(200)
    before_model = MatryoshkaModel(max_seq_length=SEQ, device="cpu")
    before = per_dim_loss(config, before_model.st, data)
    report = train(config)
    return out, config, data, before, report


def test_one_epoch_lowers_the_loss_at_every_dim(trained):
    out, config, data, before, report = trained
    from sentence_transformers import SentenceTransformer

    saved = SentenceTransformer(str(out), device="cpu")
    # the fine-tune itself: the saved model without the adapter the recipe folds in after training
    fine_tuned = SentenceTransformer(modules=list(saved.children())[:-2], device="cpu")
    after = per_dim_loss(config, fine_tuned, data)
    assert set(before) == set(after) == {f"loss_{d}" for d in DIMS}
    for key in before:
        assert after[key] < before[key], (key, before[key], after[key])
    assert report["steps"] == report["steps_this_run"] == 13
    assert set(report["loss_per_dim"]) == {f"loss_{d}" for d in DIMS}
    assert (out / "report.png").stat().st_size > 1000


def test_saved_model_loads_in_plain_sentence_transformers_with_truncate_dim(trained):
    out, data = trained[0], trained[2]
    from sentence_transformers import SentenceTransformer

    texts = ["A plane is taking off.", "A man is playing a flute."]
    full = SentenceTransformer(str(out), device="cpu").encode(texts)
    short = SentenceTransformer(str(out), device="cpu", truncate_dim=64).encode(texts)
    assert full.shape == (2, 384) and short.shape == (2, 64)
    np.testing.assert_allclose(short, full[:, :64], atol=1e-5)
    meta = json.loads((out / "matryoshka.json").read_text())
    assert meta["full_dim"] == 384 and meta["supported_dims"] == list(DIMS)
    # the recipe's adapter, fitted on the 200 pairs' distinct texts, is a layer of the saved model
    assert meta["adapter"]["kind"] == "linear" and meta["adapter"]["fitted_on"] == len(set(data.texts()))
    assert type(SentenceTransformer(str(out))[-2]).__name__ == "Dense"
    for backend in ("torch", "onnx"):  # the ONNX export holds the folded layer too
        served = Encoder(model=str(out), device="cpu", backend=backend).encode(texts)
        np.testing.assert_allclose(served, full, atol=1e-5)
    assert meta["seed"] == 12 and meta["loss"]["base"] == "cosent"
    assert meta["recipe"]["schedule"] == "sequential"
    assert meta["data"]["examples"] == 200


def test_encoder_validates_dims_against_the_trained_ones(trained, monkeypatch):
    out = trained[0]
    encoder = Encoder(model=str(out), device="cpu")
    assert encoder.info.supported_dims == DIMS
    assert encoder.encode(["a cat"], dim=32).shape == (1, 32)
    with pytest.raises(DimensionError, match="supported dims: 384, 256, 128, 64, 32, 16, 8"):
        encoder.check_dim(100)
    monkeypatch.setenv("MATRYOSHKA_MODELS", str(out.parent))
    assert "sts200" in [info.name for info in list_models()]


def test_resume_continues_from_the_checkpoint_step_not_from_zero(tmp_path):
    """In-process: a run stopped after a checkpoint at step 2, then resumed to step 5."""
    base = dict(
        data=str(data_path("stsb", "sts-train.csv")),
        out=str(tmp_path / "run"),
        limit=64,
        batch_size=8,
        max_seq_length=16,
        projection_init="identity",
        dims=(384, 64, 8),
        save_steps=2,
        evaluate=False,
    )
    first = train(TrainConfig(**base, max_steps=2))
    assert first["steps"] == first["steps_this_run"] == 2
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-2").is_dir()
    resumed = train(TrainConfig(**base, max_steps=5, resume=True))
    assert resumed["steps"] == 5 and resumed["steps_this_run"] == 3
    steps_logged = [entry["step"] for entry in resumed["log_history"] if "loss" in entry]
    assert steps_logged == sorted(steps_logged)


@pytest.mark.slow
def test_resume_after_a_killed_run_continues_from_the_checkpoint_step(tmp_path):
    out = tmp_path / "run"
    command = [
        str(Path(sys.executable).with_name("matryoshka")),
        "train",
        "--data",
        str(data_path("stsb", "sts-train.csv")),
        "--limit",
        "96",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--max-seq-length",
        "16",
        "--projection-init",
        "identity",
        "--dims",
        "384,64,8",
        "--save-steps",
        "2",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MATRYOSHKA_DATA": str(data_path())}
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    deadline = time.time() + 240
    while not state.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)  # let the checkpoint finish writing
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (out / "report.json").exists(), "the first run finished before it could be killed"
    checkpoints = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and checkpoints[-1] < 12
    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 12  # 96 pairs / batch 8
    assert report["steps_this_run"] == 12 - checkpoints[-1]


def test_dev_evaluator_reports_every_dim_with_the_project_metrics(trained):
    from sentence_transformers import SentenceTransformer

    from matryoshka.dims import truncate
    from matryoshka.eval.metrics import spearman
    from matryoshka.train.data import TrainingData
    from matryoshka.train.evaluate import DimEvaluator

    sts = load_training_data(data_path("stsb", "sts-dev.csv")).head(40)
    model = SentenceTransformer(str(trained[0]), device="cpu")
    scores = DimEvaluator(sts, DIMS)(model)
    assert set(scores) == {f"dev_spearman_{d}" for d in DIMS}
    first, second = model.encode(sts.columns["sentence1"]), model.encode(sts.columns["sentence2"])
    expected = 100 * spearman((truncate(first, 16) * truncate(second, 16)).sum(-1), sts.columns["score"])
    assert scores["dev_spearman_16"] == pytest.approx(expected, abs=1e-3)
    pairs = TrainingData(
        {"anchor": sts.columns["sentence1"], "positive": sts.columns["sentence2"]}, "pairs", ""
    )
    mrr = DimEvaluator(pairs, [384, 8])(model)
    assert set(mrr) == {"dev_mrr@10_384", "dev_mrr@10_8"} and 0 < mrr["dev_mrr@10_8"] <= mrr["dev_mrr@10_384"]
