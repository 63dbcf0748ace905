import pytest
from transformers import TrainerState, TrainingArguments

from matryoshka.errors import MatryoshkaError
from matryoshka.train.losses import MatryoshkaTrainingLoss
from matryoshka.train.schedules import DimSchedule

DIMS = [384, 256, 128, 64, 32, 16, 8]


def test_each_schedule_activates_its_dims_per_epoch():
    assert DimSchedule("all", DIMS, 4).describe() == [DIMS] * 4
    assert DimSchedule("progressive", DIMS, 4).describe() == [
        [16, 8],
        [64, 32, 16, 8],
        [256, 128, 64, 32, 16, 8],
        DIMS,
    ]
    assert DimSchedule("sequential", DIMS, 4).describe() == [
        [384],
        [384, 256, 128],
        [384, 256, 128, 64, 32],
        DIMS,
    ]
    assert DimSchedule("sequential", DIMS, 7).describe()[:3] == [[384], [384, 256], [384, 256, 128]]
    assert DimSchedule("progressive", DIMS, 1).describe() == [DIMS]


def test_callback_sets_the_loss_dims_from_training_progress(tmp_path):
    from torch import nn

    loss = MatryoshkaTrainingLoss(nn.Identity(), "infonce", dims=DIMS)
    schedule = DimSchedule("progressive", DIMS, 4, loss)
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=4, report_to="none", use_cpu=True)
    expected = {0.0: [16, 8], 0.99: [16, 8], 1.0: [64, 32, 16, 8], 2.5: DIMS[1:], 3.0: DIMS, 3.99: DIMS}
    for epoch, dims in expected.items():
        state = TrainerState(epoch=epoch, num_train_epochs=4)
        schedule.on_step_begin(args, state, None)
        assert loss.active_dims == dims
        assert loss.step_dims() == dims


def test_unknown_schedule_is_a_user_error():
    with pytest.raises(MatryoshkaError, match="unknown schedule"):
        DimSchedule("random", DIMS, 4)
