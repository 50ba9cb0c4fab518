import os

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels run through Triton's interpreter. Triton may read the flag once, when it is
    # first imported by anything (Lightning and torch import it too), so it is set before any test module loads.
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The tensors in these tests are tiny: one thread avoids OpenMP spin-waiting, which on a shared 2-core machine made the
# suite several times slower than serial execution.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    # Every test draws the same random inputs, whatever order the tests run in.
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_autoencoder(tmp_path_factory):
    """A KL autoencoder (8x8 digits -> 4x4x4 latents) fitted for 2 steps by the CLI: `(cli, last.ckpt)`.

    Shared by the tests of the autoencoder task, the first stage, the latent cache, latent diffusion and the configs.
    """
    from diffusion_helpers import fit_tiny_autoencoder

    return fit_tiny_autoencoder(tmp_path_factory.mktemp("autoencoder"))
