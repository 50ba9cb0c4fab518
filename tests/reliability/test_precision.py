"""Mixed precision: bf16-mixed and 16-mixed fits of the digits config stay finite and reach the accuracy of fp32,
and inside a whole model under autocast the additive attention's normaliser is still computed in fp32.

Lightning runs `precision: 16-mixed` on a CPU as bf16-mixed (with a warning); the fp16 path with its gradient
scaler is exercised here through Lightning's `MixedPrecision("16-mixed", "cpu")` plugin. This CPU has no fp16
arithmetic (its fp16 matrix products are ~17x slower than fp32), which is why that fit is the slow one."""

import math
from pathlib import Path

import pytest
import torch
from diffusion_helpers import run_cli, tiny_dit, wake
from reliability_helpers import QUIET, REPO_ROOT, callback, write_yaml
from torch.overrides import TorchFunctionMode

from lightnet_vision.models import LightNet

pytestmark = pytest.mark.slow

DIGITS = str(REPO_ROOT / "configs" / "classification" / "digits.yaml")
EPOCHS = 15


def fit_digits(root: Path, precision: str):
    """configs/classification/digits.yaml shortened to 15 epochs of a 2-block, 64-wide LightNet without drop path
    or jitter (1 warm-up epoch, EMA 0.9), at `precision`; the fitted CLI."""
    root.mkdir()
    trainer = {"max_epochs": EPOCHS, "logger": False, "enable_checkpointing": False, "default_root_dir": str(root)}
    trainer["callbacks"] = [callback("lightning.pytorch.callbacks.EMAWeightAveraging", decay=0.9)]
    if precision == "16-mixed":
        # precision: 16-mixed would become bf16-mixed on a CPU; the plugin keeps fp16 and its GradScaler.
        plugin = callback("lightning.pytorch.plugins.precision.MixedPrecision", precision="16-mixed", device="cpu")
        trainer |= {"precision": None, "plugins": [plugin]}
    else:
        trainer["precision"] = precision
    backbone = {"embed_dim": 64, "depth": 2, "drop_path_rate": 0.0}
    model = {"model": {"init_args": backbone}, "lr_scheduler": {"init_args": {"warmup_epochs": 1}}}
    overrides = {"trainer": trainer, "model": {"init_args": model}, "data": {"init_args": {"augment": False}}}
    config = write_yaml(root / "overrides.yaml", overrides)
    return run_cli(root, ["fit", "--config", DIGITS, "--config", config, *QUIET, "--trainer.accelerator", "cpu"])


def accuracy_of(cli) -> float:
    (metrics,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    return metrics["test/acc1"]


@pytest.fixture(scope="module")
def fp32_accuracy(tmp_path_factory) -> float:
    cli = fit_digits(tmp_path_factory.mktemp("digits") / "32-true", "32-true")
    return accuracy_of(cli)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_fit_stays_finite_and_matches_fp32(tmp_path, precision, fp32_accuracy):
    cli = fit_digits(tmp_path / precision, precision)
    plugin = cli.trainer.precision_plugin
    assert plugin.precision == precision
    assert (plugin.scaler is not None) == (precision == "16-mixed")
    assert all(torch.isfinite(value).all() for value in cli.model.state_dict().values())
    assert math.isfinite(cli.trainer.callback_metrics["train/loss"]) and math.isfinite(
        cli.trainer.callback_metrics["val/loss"]
    )
    accuracy = accuracy_of(cli)
    # 15 short epochs reach ~95% in every precision (chance: 10%). Seeds 0, 1 and 2 gave fp32 95.2 / 94.8 / 96.7,
    # bf16 95.9 / 94.8 / 96.3 and fp16 94.8 / 97.4 / 96.7 on the development machine: runs this short differ by up
    # to 2.6 points (7 of the 270 test digits) whatever the precision, hence 3 points here; the full-length runs in
    # docs/scaling.md agree within 1.
    assert fp32_accuracy > 0.9 and accuracy > 0.9
    assert abs(accuracy - fp32_accuracy) <= 0.03, (precision, accuracy, fp32_accuracy)


class NormaliserDtypes(TorchFunctionMode):
    """Records, for every `torch.softmax` (the additive attention's normalisation of the keys over the tokens), the
    dtype it ran in and whether autocast was on at that point."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.dtype, bool]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.softmax:
            self.calls.append((args[0].dtype, torch.is_autocast_enabled("cpu")))
        return func(*args, **(kwargs or {}))


def lightnet() -> LightNet:
    return LightNet(img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("network", ["classifier", "denoiser"])
def test_the_normaliser_stays_fp32_inside_a_model_under_autocast(network, dtype):
    model = lightnet() if network == "classifier" else wake(tiny_dit(depth=2))
    if network == "classifier":
        inputs = (torch.randn(4, 1, 16, 16),)
    else:
        inputs = (torch.randn(4, 1, 8, 8), torch.randint(0, 1000, (4,)), torch.randint(0, 10, (4,)))
    reference = model(*inputs)
    with NormaliserDtypes() as recorder, torch.autocast("cpu", dtype=dtype):
        out = model(*inputs)
        out.float().square().mean().backward()
    # One normalisation per attention layer, each in fp32 with autocast off, while the layers around run in `dtype`.
    assert recorder.calls == [(torch.float32, False)] * 2
    assert out.dtype == dtype
    assert all(torch.isfinite(param.grad).all() for param in model.parameters() if param.grad is not None)
    error = (out.float() - reference).square().mean().sqrt() / reference.square().mean().sqrt()
    assert error < 0.05
