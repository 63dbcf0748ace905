"""`train --resume`: after a kill mid-checkpoint it continues from the last complete checkpoint, and it
refuses a recipe other than the checkpointed run's (naming the difference); `--limit` is validated."""

import json
import shutil

import pytest

from matryoshka.datasets import data_path
from matryoshka.errors import MatryoshkaError
from matryoshka.train.loop import TrainConfig, train


def base(tmp_path) -> dict:
    return dict(
        data=str(data_path("stsb", "sts-train.csv")),
        out=str(tmp_path / "run"),
        limit=32,
        batch_size=8,
        max_seq_length=16,
        dims=(384, 64, 8),
        adapter=False,
        save_steps=1,
        evaluate=False,
    )


def test_resume_skips_a_half_written_checkpoint_and_refuses_another_recipe(tmp_path):
    settings = base(tmp_path)
    first = train(TrainConfig(**settings, max_steps=2))
    assert first["steps"] == 2
    checkpoints = tmp_path / "run" / "checkpoints"
    assert {p.name for p in checkpoints.glob("checkpoint-*")} == {"checkpoint-1", "checkpoint-2"}
    # what a kill while saving step 3 leaves: the model file cut short, no trainer state written yet
    broken = checkpoints / "checkpoint-3"
    shutil.copytree(checkpoints / "checkpoint-2", broken)
    (broken / "trainer_state.json").unlink()
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])

    for change, named in [
        ({"dims": (384, 32)}, "dims 384,32 (was 384,64,8)"),
        ({"limit": 40}, "limit 40 (was 32)"),
        ({"loss": "infonce", "temperature": 0.1}, "loss infonce (was cosent); temperature 0.1 (was 0.05)"),
    ]:
        with pytest.raises(MatryoshkaError, match="the recipe differs from the checkpointed run's") as error:
            train(TrainConfig(**(settings | change), max_steps=4, resume=True))
        assert named in str(error.value)
    assert broken.is_dir()  # a refused resume changes nothing

    # a longer run may resume, and so may one that spells out the defaults it ran with
    resumed = train(TrainConfig(**settings, loss="cosent", multi_scale=True, max_steps=4, resume=True))
    assert resumed["steps"] == 4 and resumed["steps_this_run"] == 2  # from checkpoint-2, not the broken 3
    state = json.loads((checkpoints / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_resume_with_no_complete_checkpoint_is_an_error(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-1"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text('{"global_st')  # cut short by a kill
    with pytest.raises(MatryoshkaError, match="no complete checkpoint under"):
        train(TrainConfig(**base(tmp_path), max_steps=2, resume=True))


@pytest.mark.parametrize("limit", [0, -5])
def test_limit_below_one_is_refused(tmp_path, limit):
    with pytest.raises(MatryoshkaError, match=f"--limit must be at least 1 .*got {limit}"):
        train(TrainConfig(**(base(tmp_path) | {"limit": limit})))
