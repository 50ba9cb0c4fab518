"""Hub checkpoints of both backbones through a local folder (no network): save_pretrained writes weights, config and
model card; from_pretrained, create_model(pretrained=True) and timm's local-dir loader give back the same model."""

import json

import pytest
import torch
import yaml
from diffusion_helpers import wake

from lightnet_vision.models import LightNet, LightNetDiT, create_model


def classifier(**overrides) -> LightNet:
    arguments = {"preset": "lightnet_small", "depth": 2, "num_classes": 4, "in_chans": 1, "img_size": 32}
    return LightNet(**arguments | overrides).eval()


def denoiser(**overrides) -> LightNetDiT:
    arguments = {"preset": None, "hidden_size": 32, "depth": 2, "num_heads": 2, "patch_size": 2, "num_classes": 3}
    return wake(LightNetDiT(**arguments | overrides)).eval()


def model_card(folder) -> tuple[dict, str]:
    _, front, body = (folder / "README.md").read_text().split("---\n", 2)
    return yaml.safe_load(front), body


def test_classifier_round_trip_through_a_folder(tmp_path):
    model = classifier(drop_path_rate=0.1, lrpe="cosine")
    model.reset_classifier(6, global_pool="avgmax")  # the saved config follows the model as it is now
    model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, "mean": (0.5,), "std": (0.25,)}
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]

    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architecture"] == "lightnet_small" and config["num_features"] == 384
    assert (config["num_classes"], config["global_pool"]) == (6, "avgmax")
    assert config["model_args"] == model.model_args()
    assert config["model_args"]["embed_dim"] == 384 and config["model_args"]["lrpe"] == "cosine"
    assert config["pretrained_cfg"]["mean"] == [0.5] and config["pretrained_cfg"]["input_size"] == [1, 32, 32]

    loaded = LightNet.from_pretrained(tmp_path)
    assert not loaded.training and loaded.model_args() == model.model_args()
    x = torch.randn(2, 1, 32, 48)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.pretrained_cfg["mean"] == [0.5] and loaded.pretrained_cfg["file"] == str(tmp_path)

    metadata, body = model_card(tmp_path)
    assert metadata["library_name"] == "lightnet-vision" and metadata["license"] == "apache-2.0"
    assert metadata["pipeline_tag"] == "image-classification" and "lightnet" in metadata["tags"]
    assert "LightNet.from_pretrained" in body and "timm.create_model" in body and '"embed_dim": 384' in body


def test_denoiser_round_trip_through_a_folder(tmp_path):
    model = denoiser(mlp_ratio=2.0, learn_sigma=True)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_args"] == model.model_args() and "pretrained_cfg" not in config
    assert config["model_args"]["mlp_ratio"] == 2.0 and config["architecture"] == "lightnet_dit_s_2"
    loaded = LightNetDiT.from_pretrained(tmp_path)
    x, t, y = torch.randn(2, 4, 8, 12), torch.tensor([3, 700]), torch.tensor([0, 2])
    torch.testing.assert_close(loaded(x, t, y), model(x, t, y), rtol=0, atol=0)
    metadata, body = model_card(tmp_path)
    assert "diffusion" in metadata["tags"] and "LightNetDiT.from_pretrained" in body and "timm" not in body


def test_new_classes_keep_a_fresh_head_and_the_rest_of_the_weights(tmp_path):
    model = classifier()
    model.save_pretrained(tmp_path)
    finetune = LightNet.from_pretrained(tmp_path, num_classes=9)
    assert finetune.head.out_features == 9
    for name, param in model.state_dict().items():
        if not name.startswith("head."):
            torch.testing.assert_close(finetune.state_dict()[name], param, rtol=0, atol=0, msg=name)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    classifier().save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match=r"does not fit LightNet: missing nothing, unexpected \['blocks\.1\."):
        LightNet.from_pretrained(tmp_path, depth=1)
    with pytest.raises(RuntimeError, match="size mismatch"):
        LightNet.from_pretrained(tmp_path, embed_dim=192, num_heads=3)
    with pytest.raises(ValueError, match="no config.json with model_args"):
        (tmp_path / "config.json").write_text("{}")
        LightNet.from_pretrained(tmp_path)


@pytest.mark.parametrize("source", ["folder", "safetensors", "task checkpoint"])
def test_create_model_loads_what_pretrained_cfg_names(tmp_path, source):
    model = classifier()
    if source == "folder":
        model.save_pretrained(tmp_path)
        path = tmp_path
    elif source == "safetensors":
        model.save_pretrained(tmp_path)
        path = tmp_path / "model.safetensors"
    else:  # what Lightning writes for an ImageClassification task: the backbone under `model.`
        path = tmp_path / "last.ckpt"
        state = {f"model.{k}": v for k, v in model.state_dict().items()}
        torch.save({"state_dict": state | {"val_acc1.tp": torch.zeros(1)}}, path)
    loaded = create_model(
        "lightnet_small",
        depth=2,
        num_classes=4,
        in_chans=1,
        pretrained=True,
        pretrained_cfg_overlay={"file": str(path)},
    )
    x = torch.randn(1, 1, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)
    assert loaded.pretrained_cfg["file"] == str(path)


@pytest.mark.slow
def test_timm_loads_the_folder(tmp_path):
    pytest.importorskip("timm")
    import timm.data

    from lightnet_vision.models import timm_models

    timm_models.register()
    model = classifier()
    model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, "mean": (0.5,), "std": (0.5,)}
    model.save_pretrained(tmp_path)
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    config = timm.data.resolve_data_config({}, model=loaded)
    assert config["input_size"] == (1, 32, 32) and list(config["mean"]) == [0.5]
