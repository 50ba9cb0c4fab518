import pytest
import torch

# The tensors in these tests are tiny: one thread avoids OpenMP spin-waiting, which on a shared 2-core machine made the
# suite several times slower than serial execution.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    # Every test draws the same random inputs, whatever order the tests run in.
    torch.manual_seed(0)
