import math

import pytest
import torch
from torch import nn

from matryoshka.dims import truncate
from matryoshka.errors import MatryoshkaError
from matryoshka.train.losses import MatryoshkaTrainingLoss, cosent, dim_weights, info_nce


def _ce(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(x) for x in logits))


def test_infonce_over_two_prefixes_matches_hand_computation():
    anchors = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    positives = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    loss = MatryoshkaTrainingLoss(nn.Identity(), "infonce", dims=[2, 1], distill=0.0, temperature=0.5)
    value = loss.loss_from_embeddings([anchors, positives])
    r = 1 / math.sqrt(2)
    # full dim: anchors (0.6, 0.8), (1, 0); positives (0, 1), (r, r); logits = cosines / 0.5
    full = (_ce([0.8 / 0.5, 1.4 * r / 0.5], 0) + _ce([0.0, r / 0.5], 1)) / 2
    # 1 dim: anchors (1), (1); positives (0) (a zero row stays zero), (1)
    one = (_ce([0.0, 2.0], 0) + _ce([0.0, 2.0], 1)) / 2
    assert value.item() == pytest.approx(full + one, abs=1e-5)
    assert loss.last_terms["loss_2"] == pytest.approx(full, abs=1e-5)
    assert loss.last_terms["loss_1"] == pytest.approx(one, abs=1e-5)


def test_weights_hard_negatives_and_symmetric_term():
    anchors, positives, negatives = torch.eye(3)[:2], torch.eye(3)[:2], torch.eye(3)[[2, 2]]
    # logits per anchor: its positive 1/t, the other positive 0, two hard negatives 0 (t = 0.5)
    expected = _ce([2.0, 0.0, 0.0, 0.0], 0)
    assert info_nce([anchors, positives, negatives], 0.5).item() == pytest.approx(expected, rel=1e-6)
    assert info_nce([anchors, positives], 0.5, symmetric=True).item() == pytest.approx(
        _ce([2.0, 0.0], 0), rel=1e-6
    )
    loss = MatryoshkaTrainingLoss(nn.Identity(), "infonce", dims=[3, 1], weights="full-heavy", distill=0.0)
    assert loss.weights == {3: 1.0, 1: 0.5}


def test_cosent_matches_hand_computation():
    first = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    second = torch.tensor([[1.0, 0.0], [0.6, 0.8], [1.0, 0.0]])  # cosines 1, 0.6, 0
    labels = torch.tensor([0.2, 1.0, 0.5])
    # ordered pairs (higher label i, lower label j): (1,0), (1,2), (2,0); terms exp(20 (cos_j - cos_i))
    expected = math.log(1 + math.exp(20 * (1 - 0.6)) + math.exp(20 * (0 - 0.6)) + math.exp(20 * (1 - 0)))
    assert cosent([first, second], labels, 20.0).item() == pytest.approx(expected, rel=1e-6)


def test_prefix_term_puts_no_gradient_beyond_its_prefix():
    torch.manual_seed(0)
    anchors = torch.randn(6, 16, requires_grad=True)
    positives = torch.randn(6, 16, requires_grad=True)
    loss = MatryoshkaTrainingLoss(nn.Identity(), "infonce", dims=[16, 8, 4], distill=0.5)
    loss.active_dims = [8]
    loss.loss_from_embeddings([anchors, positives]).backward()
    for tensor in (anchors, positives):
        assert tensor.grad[:, 8:].abs().max().item() == 0.0
        assert tensor.grad[:, :8].abs().max().item() > 0.0
    # the same through the base loss directly on truncate()d prefixes
    anchors.grad = None
    info_nce([truncate(anchors, 4), truncate(positives, 4)]).backward()
    assert anchors.grad[:, 4:].abs().max().item() == 0.0


def test_distillation_pulls_prefix_toward_detached_full_dim():
    torch.manual_seed(1)
    anchors = torch.randn(5, 8, requires_grad=True)
    positives = torch.randn(5, 8)
    loss = MatryoshkaTrainingLoss(nn.Identity(), "infonce", dims=[8, 2], distill=0.5)
    loss.active_dims = [2]
    value = loss.loss_from_embeddings([anchors, positives])
    terms = loss.last_terms
    assert set(terms) == {"loss_2", "distill_2"}
    assert value.item() == pytest.approx(terms["loss_2"] + 0.5 * terms["distill_2"], rel=1e-6)
    assert terms["distill_2"] > 0
    value.backward()  # the teacher (full dim) is detached: only the 2-dim prefix gets gradient
    assert anchors.grad[:, 2:].abs().max().item() == 0.0


def test_dims_per_step_always_keeps_full_dim():
    loss = MatryoshkaTrainingLoss(nn.Identity(), "infonce", dims=[64, 32, 16, 8, 4], dims_per_step=2)
    seen = set()
    for _ in range(50):
        dims = loss.step_dims()
        assert len(dims) == 2 and dims[0] == 64
        seen.update(dims)
    assert seen == {64, 32, 16, 8, 4}


def test_dim_weight_schemes():
    dims = [384, 256, 128, 64]
    assert dim_weights(dims, "uniform") == [1.0] * 4
    assert dim_weights(dims, "decreasing") == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4])
    assert dim_weights(dims, "importance", alpha=0.5) == pytest.approx([1, 0.5, 0.25, 0.125])
    assert dim_weights(dims, "full-heavy") == [1.0, 0.5, 0.5, 0.5]
    assert dim_weights(dims, [4, 3, 2, 1]) == [4.0, 3.0, 2.0, 1.0]
    with pytest.raises(MatryoshkaError, match="4 dims"):
        dim_weights(dims, [1, 2])
    with pytest.raises(MatryoshkaError, match="unknown weights"):
        dim_weights(dims, "heavy")
