import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The test machine is shared; one thread per process trains several times faster there."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
