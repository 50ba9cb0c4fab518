"""torch.compile of both backbones with fullgraph=True (no graph break, forward and backward), and a compiled fit."""

import pytest
import torch
from classification_helpers import cpu_trainer
from diffusion_helpers import wake
from lightning.pytorch.callbacks import EMAWeightAveraging

from lightnet_vision.checkpoints import load_checkpoint
from lightnet_vision.datamodules import DigitsDataModule
from lightnet_vision.models import LightNet, LightNetDiT
from lightnet_vision.tasks import ImageClassification

pytestmark = pytest.mark.slow


def tiny_classifier(lrpe: str) -> LightNet:
    return LightNet(patch_size=4, in_chans=1, num_classes=5, embed_dim=32, depth=2, num_heads=2, lrpe=lrpe)


def tiny_denoiser(lrpe: str) -> LightNetDiT:
    # No label dropout: the eager and the compiled call would each draw which labels to drop.
    config = {"input_size": 8, "patch_size": 2, "hidden_size": 32, "depth": 2, "num_heads": 2, "num_classes": 5}
    return wake(LightNetDiT(**config, class_dropout_prob=0.0, lrpe=lrpe))


def assert_compiled_matches_eager(model: torch.nn.Module, *inputs: torch.Tensor) -> None:
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: a single graph break raises
    eager_out = model(*inputs)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), list(model.parameters()))
    out = compiled(*inputs)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    torch.testing.assert_close(out, eager_out, rtol=1e-4, atol=1e-5)
    for grad, eager_grad in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(grad, eager_grad, rtol=1e-3, atol=1e-5)


def test_classifier_compiles_in_one_graph():
    # The paper's cosine form in the classifier, the rotary form in the denoiser: both encodings compile (each
    # compilation costs tens of seconds on a CPU, so not every pair is tried).
    torch.manual_seed(0)
    assert_compiled_matches_eager(tiny_classifier("cosine"), torch.randn(2, 1, 16, 12))


def test_denoiser_compiles_in_one_graph():
    torch.manual_seed(0)
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.tensor([1, 4])
    assert_compiled_matches_eager(tiny_denoiser("rotary"), x, t, y)


def test_compiled_fit_keeps_the_eager_parameter_names(tmp_path):
    torch._dynamo.reset()
    backbone = LightNet(img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=16, depth=1, num_heads=2)
    names = set(backbone.state_dict())
    task = ImageClassification(backbone, compile=True)
    trainer = cpu_trainer(
        tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, callbacks=[EMAWeightAveraging()]
    )
    trainer.fit(task, datamodule=DigitsDataModule(image_size=16, batch_size=8, augment=False))
    assert task.model._compiled_call_impl is not None  # the backbone ran compiled
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    trainer.save_checkpoint(tmp_path / "compiled.ckpt")
    checkpoint = load_checkpoint(tmp_path / "compiled.ckpt")
    assert {name.removeprefix("model.") for name in checkpoint["state_dict"] if name.startswith("model.")} == names
