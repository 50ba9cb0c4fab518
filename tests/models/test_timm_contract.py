"""timm's model contract for every classifier preset, in the spirit of timm's tests/test_models.py: pretrained_cfg,
the pretrained keywords, head and pooling, layer-decay groups, intermediate features and timm's registry.

The tests that go through timm itself (its registry, data config, optimizer factory and feature wrapper) are marked
slow: importing timm alone takes seconds."""

import re
import sys

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lightnet_vision.models import LightNet, create_model, list_models

CLASSIFIERS = list_models(model_cls=LightNet)
# Preset widths; two blocks keep a forward of the base width fast on a CPU.
SMALL = {"depth": 2, "num_classes": 7}
CFG_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std", "first_conv", "classifier")


@pytest.fixture(scope="module")
def timm():
    pytest.importorskip("timm")
    import timm.data
    import timm.optim

    from lightnet_vision.models import timm_models

    timm_models.register()
    return timm


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_pretrained_cfg_describes_the_model_as_built(name):
    with torch.device("meta"):
        default = create_model(name)
        gray = create_model(name, in_chans=1, img_size=48, num_classes=10)
    for model in (default, gray):
        cfg = model.pretrained_cfg
        assert model.default_cfg is cfg and all(key in cfg for key in CFG_KEYS)
        first_conv, head = model.get_submodule(cfg["first_conv"]), model.get_submodule(cfg["classifier"])
        assert isinstance(first_conv, nn.Conv2d) and first_conv.in_channels == cfg["input_size"][0]
        assert head is model.get_classifier() and head.out_features == cfg["num_classes"] == model.num_classes
        assert len(cfg["mean"]) == len(cfg["std"]) == model.in_chans
        assert cfg["architecture"] == name and not any(cfg.get(key) for key in ("file", "hf_hub_id", "url"))
    assert default.pretrained_cfg["input_size"] == (3, 224, 224)
    assert default.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)  # ImageNet's, for 3 channels
    assert gray.pretrained_cfg["input_size"] == (1, 48, 48)
    assert (gray.pretrained_cfg["mean"], gray.pretrained_cfg["std"]) == ((0.0,), (1.0,))  # none known: as they are


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_pretrained_keywords(name, tmp_path):
    # No weights are published: pretrained=True says so and how to give some.
    with pytest.raises(
        RuntimeError, match=rf"no pretrained weights of {name} are published yet.*pretrained_cfg_overlay"
    ):
        create_model(name, pretrained=True, depth=1)
    # pretrained=False builds; the overlay is merged into the model's pretrained_cfg...
    source = create_model(name, pretrained=False, depth=1, pretrained_cfg_overlay={"crop_pct": 1.0, "mean": (0.5,) * 3})
    assert source.pretrained_cfg["crop_pct"] == 1.0 and source.pretrained_cfg["input_size"] == (3, 224, 224)
    # ...and a file it names is loaded, into a model with another head too (fine-tuning).
    weights = str(tmp_path / "weights.safetensors")
    save_file(source.state_dict(), weights)
    loaded = create_model(name, depth=1, pretrained=True, pretrained_cfg_overlay={"file": weights})
    for (key, value), expected in zip(loaded.state_dict().items(), source.state_dict().values(), strict=True):
        assert torch.equal(value, expected), key
    finetune = create_model(name, depth=1, num_classes=3, pretrained=True, pretrained_cfg={"file": weights})
    torch.testing.assert_close(finetune.blocks[0].mlp.up.weight, source.blocks[0].mlp.up.weight)
    assert finetune.head.out_features == 3


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_head_width_pooling_and_reset_classifier(name):
    model = create_model(name, **SMALL).eval()
    x = torch.randn(2, 3, 32, 48)
    tokens = model.forward_features(x)  # [2, 2 * 3, D]
    assert model.head_hidden_size == model.num_features == model.embed_dim == tokens.shape[-1]
    assert model.forward_head(tokens, pre_logits=True).shape == (2, model.head_hidden_size)
    pooled = {
        "avg": tokens.mean(dim=1),
        "max": tokens.amax(dim=1),
        "avgmax": 0.5 * (tokens.mean(dim=1) + tokens.amax(dim=1)),
        "": tokens,  # no pooling: the head sees every token
    }
    for pool, expected in pooled.items():
        model.reset_classifier(5, global_pool=pool)
        assert model.global_pool == pool and model.num_classes == 5
        torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), expected)
        assert model(x).shape == (*expected.shape[:-1], 5)
    model.reset_classifier(0)  # the pooling stays as it was
    assert model.global_pool == "" and isinstance(model.get_classifier(), nn.Identity)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, "token")
    assert create_model(name, depth=1, global_pool="max").global_pool == "max"


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_group_matcher_orders_stem_blocks_and_head(name):
    model = create_model(name, depth=3)
    matcher = model.group_matcher()

    def group(param_name: str) -> float:
        if re.match(matcher["stem"], param_name):
            return -1
        for pattern, suffix in matcher["blocks"]:
            if found := re.match(pattern, param_name):
                return suffix[0] if suffix else int(found.group(1))
        return float("inf")  # unmatched: the head, last

    groups = {name_: group(name_) for name_, _ in model.named_parameters()}
    assert {groups[n] for n in groups if n.startswith(("patch_embed.", "pos_tpe."))} == {-1}
    assert all(groups[n] == int(n.split(".")[1]) for n in groups if n.startswith("blocks."))
    assert groups["norm.weight"] == 99999 and groups["head.weight"] == float("inf")


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_forward_intermediates_are_maps_on_the_patch_grid(name):
    model = create_model(name, depth=3, num_classes=7).eval()
    x = torch.randn(2, 3, 48, 64)  # a 3x4 grid of 16-pixel patches
    final, maps = model.forward_intermediates(x)
    dim = model.embed_dim
    assert [tuple(m.shape) for m in maps] == [(2, dim, 3, 4)] * 3
    torch.testing.assert_close(final, model.forward_features(x))
    # The map of the last block, normed, is forward_features laid out on the grid (row-major tokens).
    (last,) = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
    torch.testing.assert_close(last, final.reshape(2, 3, 4, dim).permute(0, 3, 1, 2))
    # A list of indices (negative from the end), early stopping and token layout give the same blocks.
    picked = model.forward_intermediates(x, indices=[0, -1], stop_early=True, intermediates_only=True)
    torch.testing.assert_close(picked, [maps[0], maps[2]])
    tokens = model.forward_intermediates(x, indices=[1], output_fmt="NLC", intermediates_only=True)
    torch.testing.assert_close(tokens[0], maps[1].flatten(2).transpose(1, 2))
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[3])
    # feature_info: one entry per block, channels and stride of its map.
    assert [(f["module"], f["num_chs"], f["reduction"]) for f in model.feature_info] == [
        (f"blocks.{i}", dim, 16) for i in range(3)
    ]
    # A feature extractor keeps the blocks up to the last one taken and drops the head.
    assert model.prune_intermediate_layers([0, 1]) == [0, 1]
    assert len(model.blocks) == 2 and model.num_classes == 0 and len(model.feature_info) == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_timm_builds_the_preset_by_name(timm, name):
    assert name in timm.list_models("lightnet*")
    model = timm.create_model(name, depth=1, num_classes=10, in_chans=1, img_size=32, drop_path_rate=0.1)
    assert isinstance(model, LightNet) and model.preset == name
    assert (model.num_classes, model.in_chans, len(model.blocks)) == (10, 1, 1)
    # timm's data config is the model's own, not timm's defaults.
    config = timm.data.resolve_data_config({}, model=model)
    assert config["input_size"] == (1, 32, 32) and tuple(config["mean"]) == (0.0,) and config["crop_pct"] == 0.875
    with pytest.raises(RuntimeError, match="No pretrained weights exist"):
        timm.create_model(name, depth=1, pretrained=True)
    assert timm.models.get_pretrained_cfg(name).input_size == (3, 224, 224)


@pytest.mark.slow
def test_timm_layer_decay_gives_one_group_per_layer(timm):
    depth = 4
    model = timm.create_model("lightnet_tiny", depth=depth)
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    scales = {group["lr_scale"] for group in optimizer.param_groups}
    # stem, each block (the last with the final norm), head: depth + 2 layers, scaled 0.5^(depth+1), ..., 1.
    assert scales == {0.5**i for i in range(depth + 2)}
    head = [g for g in optimizer.param_groups if any(p is model.head.weight for p in g["params"])][0]
    stem = [g for g in optimizer.param_groups if any(p is model.patch_embed.proj.weight for p in g["params"])][0]
    assert head["lr_scale"] == 1.0 and stem["lr_scale"] == 0.5 ** (depth + 1)
    # MD-TPE's decays are not weight-decayed (no_weight_decay), like every 1-D parameter.
    tpe = [g for g in optimizer.param_groups if any(p is model.pos_tpe.decay_logit for p in g["params"])][0]
    assert tpe["weight_decay"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("build", ["ours", "timm"])
def test_features_only_gives_maps_and_their_description(timm, build):
    kwargs = {"depth": 4, "features_only": True, "out_indices": (1, 3)}
    features = (
        create_model("lightnet_small", **kwargs) if build == "ours" else timm.create_model("lightnet_small", **kwargs)
    )
    maps = features(torch.randn(2, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(2, 384, 4, 6)] * 2
    assert features.feature_info.channels() == [384, 384] and features.feature_info.reduction() == [16, 16]
    assert len(features.model.blocks) == 4  # pruned after the last block taken


@pytest.mark.slow
def test_registering_twice_changes_nothing(timm, recwarn):
    from lightnet_vision.models import timm_models

    before = timm.list_models("lightnet*")
    assert timm_models.register() == CLASSIFIERS
    assert timm.list_models("lightnet*") == before == CLASSIFIERS
    assert not [w for w in recwarn if "Overwriting" in str(w.message)]


@pytest.mark.slow
def test_a_timm_script_runs_with_the_presets_registered(timm, tmp_path, monkeypatch):
    # What `python -m lightnet_vision.models.timm_models train.py --model lightnet_tiny ...` does: the script runs
    # as __main__ with its own argv, and timm knows the presets.
    script = tmp_path / "script.py"
    script.write_text(
        "import sys, timm, timm.data\n"
        "model = timm.create_model(sys.argv[1], depth=1, num_classes=3)\n"
        "config = timm.data.resolve_data_config({}, model=model)\n"
        "open(sys.argv[2], 'w').write(f'{type(model).__name__} {config[\"input_size\"]}')\n"
    )
    from lightnet_vision.models import timm_models

    monkeypatch.setattr(sys, "argv", list(sys.argv))
    timm_models.main([str(script), "lightnet_tiny", str(tmp_path / "out.txt")])
    assert (tmp_path / "out.txt").read_text() == "LightNet (3, 224, 224)"
