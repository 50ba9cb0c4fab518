"""Deploying the backbones: torch.export and the ONNX (dynamo) exporter with dynamic height and width, run at other
sizes than the example's, against the eager model; what tracing does instead."""

import warnings

import pytest
import torch
from torch.export import Dim

from lightnet_vision.layers.md_tpe import toeplitz_along, toeplitz_matrix_along
from lightnet_vision.models import LightNet, LightNetDiT

# Grids of more than 4×4 patches: MD-TPE's doubling scan took log2(side) steps, so a graph exported at 4×4 held two
# steps and was wrong (ONNX) or refused (torch.export) from 5 patches on.
SIZES = [(32, 48), (128, 80)]


def small_classifier() -> LightNet:
    return LightNet(preset=None, embed_dim=32, depth=2, num_heads=2, num_classes=5, img_size=64).eval()


def dynamic_image(patch: int) -> dict:
    # At least 2 patches per side: an axis of 1 is specialised by torch.export (its 0/1 rule).
    h, w = Dim("h", min=2, max=64), Dim("w", min=2, max=64)
    return {0: Dim("batch", min=1, max=64), 2: patch * h, 3: patch * w}


@pytest.mark.parametrize("shape", [(2, 5, 7, 3, 4), (1, 9, 1, 2, 3)])
@pytest.mark.parametrize("dim", [1, 2])
def test_toeplitz_matrix_equals_the_doubling_scan(shape, dim):
    x = torch.randn(shape)
    heads = shape[3]
    forward, backward = torch.rand(heads, 1), torch.rand(heads, 1)
    torch.testing.assert_close(
        toeplitz_matrix_along(x, forward, backward, dim), toeplitz_along(x, forward, backward, dim)
    )


@pytest.mark.slow
def test_torch_export_runs_at_other_sizes_and_with_grad():
    model = small_classifier()
    program = torch.export.export(model, (torch.randn(2, 3, 64, 64),), dynamic_shapes={"x": dynamic_image(16)})
    exported = program.module()
    for height, width in SIZES:
        x = torch.randn(3, 3, height, width)
        with torch.no_grad():
            torch.testing.assert_close(exported(x), model(x), rtol=1e-4, atol=1e-5)
    # Called with autograd on, as a fine-tuning or attribution script would: gradients reach the input.
    x = torch.randn(2, 3, 96, 96, requires_grad=True)
    exported(x).square().sum().backward()
    reference = x.detach().clone().requires_grad_()
    model(reference).square().sum().backward()
    torch.testing.assert_close(x.grad, reference.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_denoiser_exports_with_dynamic_latent_size():
    torch.manual_seed(0)
    model = LightNetDiT(
        preset=None, hidden_size=32, depth=1, num_heads=2, patch_size=2, num_classes=3, learn_sigma=True
    )
    model.eval()
    with torch.no_grad():  # random adaLN-Zero and output layers, so the output is not 0
        for name, param in model.named_parameters():
            if "adaLN_modulation" in name or "final_layer.linear" in name:
                param.normal_(std=0.1)
    example = (torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.tensor([0, 2]))
    batch = Dim("batch", min=1, max=64)
    shapes = {"x": dynamic_image(2) | {0: batch}, "t": {0: batch}, "y": {0: batch}}
    exported = torch.export.export(model, example, dynamic_shapes=shapes).module()
    x, t, y = torch.randn(3, 4, 12, 20), torch.tensor([0, 400, 999]), torch.tensor([1, 0, 2])
    with torch.no_grad():
        out = exported(x, t, y)
        assert out.shape == (3, 8, 12, 20)
        torch.testing.assert_close(out, model(x, t, y), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_onnx_export_runs_in_onnxruntime_at_two_sizes(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")  # the dynamo exporter's translator
    model = small_classifier()
    path = tmp_path / "lightnet.onnx"
    example = (torch.randn(2, 3, 64, 64),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation notices
        program = torch.onnx.export(
            model, example, dynamo=True, dynamic_shapes={"x": dynamic_image(16)}, input_names=["images"]
        )
    program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for height, width in SIZES:
        x = torch.randn(3, 3, height, width)
        (logits,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(logits), model(x), rtol=1e-4, atol=1e-5)


def test_tracing_warns_that_the_grid_is_fixed():
    model = small_classifier()
    with pytest.warns(UserWarning, match="traced LightNet holds the patch grid"):
        torch.jit.trace(model, torch.randn(1, 3, 32, 32), check_trace=False)
