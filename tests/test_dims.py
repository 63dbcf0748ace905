import numpy as np
import pytest
import torch

from matryoshka import DimensionError, truncate, validate_dim


def test_truncate_numpy_slices_and_renormalises():
    out = truncate(np.array([[3.0, 4.0, 12.0], [0.0, 2.0, 1.0]]), 2)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 1.0]])


def test_truncate_one_vector_and_full_dim():
    np.testing.assert_allclose(truncate(np.array([3.0, 4.0, 12.0]), 2), [0.6, 0.8])
    np.testing.assert_allclose(truncate(np.array([3.0, 4.0, 12.0])), np.array([3, 4, 12]) / 13)


def test_zero_rows_stay_zero_without_nan():
    out = truncate(np.array([[0.0, 0.0, 5.0], [1.0, 0.0, 0.0]]), 2)
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(out, [[0.0, 0.0], [1.0, 0.0]])


def test_truncate_keeps_float_dtype():
    assert truncate(np.ones((2, 4), dtype=np.float16), 2).dtype == np.float16
    assert truncate(np.ones((2, 4), dtype=np.float32), 2).dtype == np.float32


def test_truncate_torch_matches_numpy_and_keeps_gradient_in_prefix():
    x = torch.tensor([[3.0, 4.0, 12.0], [0.0, 0.0, 0.0]], requires_grad=True)
    out = truncate(x, 2)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.detach().numpy(), [[0.6, 0.8], [0.0, 0.0]])
    out[0].sum().backward()
    assert x.grad[0, 2] == 0 and x.grad[0, :2].abs().sum() > 0
    assert not torch.isnan(x.grad).any()


@pytest.mark.parametrize(
    ("dim", "message"),
    [
        (0, "between 1 and 8"),
        (-3, "between 1 and 8"),
        (9, "between 1 and 8"),
        (2.5, "must be an integer"),
        ("4", "must be an integer"),
        (True, "must be an integer"),
    ],
)
def test_validate_dim_rejects(dim, message):
    with pytest.raises(DimensionError, match=message):
        validate_dim(dim, 8)


def test_validate_dim_supported_dims_are_listed():
    assert validate_dim(np.int64(4), 8, supported=(8, 4)) == 4
    assert validate_dim(4.0, 8) == 4
    with pytest.raises(DimensionError, match="supported dims: 8, 4"):
        validate_dim(5, 8, supported=(4, 8))


def test_truncate_rejects_bad_shapes():
    with pytest.raises(DimensionError, match="1-D or 2-D"):
        truncate(np.ones((2, 2, 2)), 1)
    with pytest.raises(DimensionError, match="between 1 and 3"):
        truncate(np.ones((2, 3)), 4)
