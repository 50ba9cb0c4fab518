"""The peer configs swap only the backbone: configs/classification/digits_deit.yaml (timm's DeiT) and
configs/diffusion/digits_dit.yaml (diffusers' DiT), each composed over the LightNet config of its quickstart, fit a few
steps through the CLI, and their checkpoints (EMA weights) predict through the CLI as LightNet's do."""

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from classification_helpers import write_digit_pngs
from diffusion_helpers import DIGITS_8, QUIET

from lightnet_vision.checkpoints import load_checkpoint
from lightnet_vision.cli import build_cli

pytest.importorskip("timm")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEIT = [
    "--config",
    str(CONFIGS / "classification/digits.yaml"),
    "--config",
    str(CONFIGS / "classification/digits_deit.yaml"),
]
DIT = ["--config", str(CONFIGS / "diffusion/digits.yaml"), "--config", str(CONFIGS / "diffusion/digits_dit.yaml")]
FEW_STEPS = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch):
    # LightningCLI warns when it sees both `args` and a command line; the command line here is pytest's.
    monkeypatch.setattr(sys, "argv", ["lightnet-vision"])


def test_the_peer_configs_change_only_the_backbone():
    pairs = [("classification/digits.yaml", "classification/digits_deit.yaml")]
    pairs += [("diffusion/digits.yaml", "diffusion/digits_dit.yaml")]
    for recipe, peer in pairs:
        recipe, peer = (yaml.safe_load((CONFIGS / name).read_text()) for name in (recipe, peer))
        # Nothing but the backbone and the run folder: the recipe (data, optimiser, schedule, callbacks) is shared.
        assert peer.keys() == {"trainer", "model"} and peer["trainer"].keys() == {"default_root_dir"}
        assert peer["trainer"]["default_root_dir"] != recipe["trainer"]["default_root_dir"]
        assert peer["model"]["class_path"] == recipe["model"]["class_path"]
        assert peer["model"]["init_args"].keys() == {"model"}


@pytest.mark.slow
def test_deit_config_fits_keeps_the_ema_weights_and_predicts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["fit", *DEIT, *QUIET, *FEW_STEPS])
    deit = cli.model.model
    assert type(deit).__name__ == "VisionTransformer" and type(deit).__module__ == "timm.models.vision_transformer"
    # The digits LightNet's width, depth, heads and patch; classes, channels and size from the data.
    assert (deit.embed_dim, len(deit.blocks), deit.blocks[0].attn.num_heads) == (128, 6, 4)
    assert deit.patch_embed.patch_size == (8, 8) and deit.patch_embed.img_size == (32, 32)
    assert (deit.num_classes, deit.patch_embed.proj.in_channels) == (10, 1)
    assert deit.dynamic_img_size and deit.pos_embed.shape == (1, 1 + 4 * 4, 128)
    assert Path(cli.trainer.log_dir).is_relative_to(tmp_path / "runs" / "digits_deit")

    # The checkpoint `make demo` tests holds the EMA weights, which load into the model as demo.classify loads them.
    best = cli.trainer.checkpoint_callback.best_model_path
    saved = load_checkpoint(best)
    assert any(not torch.equal(saved["state_dict"][k], v) for k, v in saved["current_model_state"].items())
    cli.model.load_state_dict(saved["state_dict"])
    with torch.no_grad():
        for side in (24, 48):  # other grids through the interpolated position table
            assert cli.model.eval()(torch.zeros(2, 1, side, side)).shape == (2, 10)

    images = write_digit_pngs(tmp_path / "to_predict", 3)
    predict = ["--data.init_args.predict_dir", str(tmp_path / "to_predict"), "--ckpt_path", best]
    predicted = build_cli(["predict", *DEIT, *QUIET, *predict])
    assert type(predicted.model.model).__name__ == "VisionTransformer"
    (csv_path,) = (tmp_path / "runs" / "digits_deit").rglob("predictions.csv")
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["path"] for row in rows) == sorted(str(path) for path in images)


@pytest.mark.slow
def test_dit_config_fits_on_the_first_stage_and_samples(tmp_path, monkeypatch, tiny_autoencoder):
    from lightnet_vision.models import DiffusersDiT

    _, first_stage = tiny_autoencoder
    monkeypatch.chdir(tmp_path)
    args = [*DIT, *QUIET, "--model.init_args.first_stage", str(first_stage), *DIGITS_8]
    args += ["--model.init_args.num_sampling_steps", "2"]
    cli = build_cli(["fit", *args, *FEW_STEPS])
    dit = cli.model.model
    assert isinstance(dit, DiffusersDiT)
    # The digits LightNet-DiT's width, depth, heads and patch; classes, channels and side through the first stage.
    assert (dit.hidden_size, len(dit.dit.transformer_blocks), dit.dit.config.num_attention_heads) == (128, 4, 2)
    assert (dit.patch_size, dit.num_classes, dit.in_channels, dit.input_size) == (2, 10, 4, 4)
    assert not dit.learn_sigma and dit.out_channels == 4  # the config's fixed variance

    checkpoint = cli.trainer.checkpoint_callback.last_model_path
    out = tmp_path / "samples"
    sample = ["--model.init_args.predict_classes", "[2, 7]", "--model.init_args.samples_per_class", "2"]
    writer = ["--trainer.callbacks+=lightnet_vision.callbacks.SampleWriter", "--trainer.callbacks.output_dir", str(out)]
    predicted = build_cli(["predict", *args, "--ckpt_path", checkpoint, *sample, *writer])
    ema = load_checkpoint(checkpoint)["state_dict"]
    for name, value in predicted.model.state_dict().items():
        torch.testing.assert_close(value, ema[name], rtol=0, atol=0, msg=name)  # sampled with the EMA weights
    with np.load(out / "samples.npz") as npz:
        assert npz["arr_0"].shape == (4, 8, 8, 1) and npz["labels"].tolist() == [2, 2, 7, 7]


def test_fine_tuning_starts_from_the_table_zero_shot_runs_with(tmp_path):
    # benchmarks/resolution_transfer.py builds DeiT for the new grid and resamples the 4×4 position table into it:
    # before any step, that model's logits at 48² are those of the 32² model run at 48² by dynamic_img_size.
    from timm.models.vision_transformer import VisionTransformer

    from benchmarks.resolution_transfer import load_at_size
    from lightnet_vision.tasks import ImageClassification

    def deit(img_size: int) -> ImageClassification:
        backbone = VisionTransformer(
            img_size=img_size, patch_size=8, in_chans=1, num_classes=10, embed_dim=32, depth=1, num_heads=2,
            dynamic_img_size=True,
        )  # fmt: skip
        return ImageClassification(backbone).eval()

    trained = deit(32)
    with torch.no_grad():
        trained.model.pos_embed.normal_()  # a table that is not smooth: interpolation changes it
    checkpoint = tmp_path / "trained.ckpt"
    torch.save({"state_dict": trained.state_dict()}, checkpoint)
    at_48 = deit(48)
    load_at_size(at_48, str(checkpoint), grid=6)
    assert at_48.model.pos_embed.shape == (1, 1 + 36, 32)
    images = torch.randn(3, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(at_48(images), trained(images), atol=1e-5, rtol=1e-5)
    same = deit(32)
    load_at_size(same, str(checkpoint), grid=4)  # the trained grid: the weights as they are
    torch.testing.assert_close(same.model.pos_embed, trained.model.pos_embed, atol=0, rtol=0)
