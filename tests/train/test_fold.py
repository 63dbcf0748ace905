"""The recipe's adapter step: a fitted linear adapter folded into a sentence-transformers model."""

import numpy as np
import pytest

from matryoshka import MatryoshkaError
from matryoshka.train.adapter import fit_adapter
from matryoshka.train.data import TrainingData
from matryoshka.train.fold import fit_on_training_texts, fold_adapter
from matryoshka.train.loop import TrainConfig, loss_dims, schedule_ran
from matryoshka.train.model import MatryoshkaModel

DIMS = (384, 128, 8)


@pytest.fixture(scope="module")
def base_st():
    return MatryoshkaModel(max_seq_length=32, device="cpu").st


def test_folded_model_outputs_what_the_adapter_gives_by_hand(base_st, sentences, capsys):
    texts = sentences[:120]
    raw = base_st.encode(texts, convert_to_numpy=True)
    columns = {"sentence1": texts[:60], "sentence2": texts[60:], "score": [0.5] * 60}
    data = TrainingData(columns, "scored", "stsb")
    adapter = fit_on_training_texts(base_st, data, (384, 64, 8), progress=True)
    assert adapter.meta["fitted_on"] == 120 and adapter.meta["dims"] == [384, 64, 8]
    assert "adapter step: encoding 120 training texts" in capsys.readouterr().err  # not minutes of silence
    # held-out choice among the uncentred rotations only: whatever is kept folds
    selection = adapter.meta["selection"]
    assert set(selection["mean_recall"]) == {"start", "trained"} and selection["held_out"] == 12
    from sentence_transformers import SentenceTransformer

    folded = SentenceTransformer(modules=list(base_st.children()), device="cpu")
    fold_adapter(folded, adapter)
    np.testing.assert_allclose(folded.encode(texts), adapter.transform(raw), atol=1e-5)
    # a rotation: every full-dim similarity of the fine-tune stays
    np.testing.assert_allclose(folded.encode(texts) @ folded.encode(texts).T, raw @ raw.T, atol=1e-5)


def test_only_an_uncentred_linear_adapter_folds(base_st, full_vectors):
    centred = fit_adapter(full_vectors[:64], "pca")
    with pytest.raises(MatryoshkaError, match="only an uncentred linear adapter"):
        fold_adapter(base_st, centred)


@pytest.mark.parametrize(
    ("base", "settings", "expected"),
    [
        ("cosent", {}, DIMS),
        ("infonce", {}, (384,)),  # the full dim only: the adapter makes the prefixes
        ("infonce", {"multi_scale": True}, DIMS),
        ("infonce", {"adapter": False}, DIMS),  # without an adapter, only a multi-scale loss nests
        ("cosent", {"multi_scale": False}, (384,)),
    ],
)
def test_the_loss_covers_every_dim_or_the_full_dim_only(base, settings, expected):
    assert loss_dims(TrainConfig(data="x", out="y", dims=DIMS, **settings), base) == expected


def test_the_recorded_schedule_is_the_one_that_ran():
    """A loss on the full dim alone runs no dim schedule, whatever --schedule says (InfoNCE's default)."""
    assert schedule_ran("sequential", (384,)) == "full dim only"
    assert schedule_ran("sequential", DIMS) == "sequential" and schedule_ran("all", DIMS) == "all"
