"""impl="triton" where the Triton kernels cannot run says so, instead of failing inside Triton's launcher."""

import pytest
import torch

from lightnet_vision.kernels import additive_attention
from lightnet_vision.kernels.additive import pytorch as additive_pytorch


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs CPU tensors without a GPU")
def test_triton_on_cpu_without_the_interpreter_names_the_device_and_the_alternatives(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = torch.randn(1, 8, 2, 4)
    with pytest.raises(RuntimeError, match=r"need CUDA tensors; these are on cpu.*impl='auto'.*TRITON_INTERPRET=1"):
        additive_attention(q, q, q, impl="triton")
    # impl="auto" still runs there, on the PyTorch path.
    assert additive_attention(q, q, q).shape == (1, 8, 2, 4)


def test_triton_without_triton_installed_says_so(monkeypatch):
    monkeypatch.setattr(additive_pytorch, "_triton_imports", lambda: False)
    q = torch.randn(1, 8, 2, 4)
    with pytest.raises(RuntimeError, match=r"needs Triton \(pip install triton\)"):
        additive_attention(q, q, q, impl="triton")
