"""ImageClassification: parameter groups, the warm-up cosine schedule, MixUp/CutMix, metrics and logged names."""

import csv
import json
import math

import pytest
import torch
from classification_helpers import cpu_trainer
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightnet_vision.datamodules import DigitsDataModule
from lightnet_vision.models import LightNet
from lightnet_vision.tasks import ImageClassification, WarmupCosineLR
from lightnet_vision.tasks.optim import param_groups_weight_decay


def tiny_lightnet(num_classes: int = 10, in_chans: int = 1) -> LightNet:
    return LightNet(
        img_size=16, patch_size=4, in_chans=in_chans, num_classes=num_classes, embed_dim=16, depth=1, num_heads=2
    )


def adamw(params: list) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)


class FixedLogits(nn.Module):
    """A backbone that returns its input as the logits: images `[B, 1, 1, C]` are the scores."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)  # [B, C]


def test_param_groups_decay_only_matrices_and_convolutions():
    task = ImageClassification(tiny_lightnet(), optimizer=adamw, lr_scheduler=None)
    optimizer = task.configure_optimizers()["optimizer"]
    weight_decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    named = dict(task.model.named_parameters())
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(named)  # each exactly once
    assert {id(p) for p in named.values()} == weight_decay.keys()
    for name, param in named.items():
        no_decay = name.endswith(".bias") or param.ndim == 1 or name == "pos_tpe.decay_logit"
        assert weight_decay[id(param)] == (0.0 if no_decay else 0.05), name
    # Spot checks, including the one 2-D parameter that only no_weight_decay() exempts.
    assert named["pos_tpe.decay_logit"].ndim == 2 and weight_decay[id(named["pos_tpe.decay_logit"])] == 0.0
    for name in ("norm.weight", "pos_tpe.norm_weight", "blocks.0.attn.out_norm.weight", "blocks.0.norm1.weight"):
        assert weight_decay[id(named[name])] == 0.0, name
    for name in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.up.weight", "head.weight"):
        assert weight_decay[id(named[name])] == 0.05, name


def test_param_groups_skip_frozen_parameters():
    model = tiny_lightnet()
    model.head.requires_grad_(False)
    grouped = {id(p) for group in param_groups_weight_decay(model) for p in group["params"]}
    assert id(model.head.weight) not in grouped and id(model.head.bias) not in grouped
    assert id(model.patch_embed.proj.weight) in grouped


def schedule(base_lr: float, total_steps: int, steps_per_epoch: int, **kwargs) -> tuple[list[float], float]:
    """The learning rate of each optimizer step, and the one left after the last step."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = WarmupCosineLR(optimizer, total_steps, steps_per_epoch, **kwargs)
    lrs = []
    for _ in range(total_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs, optimizer.param_groups[0]["lr"]


def test_warmup_cosine_schedule():
    base, warmup = 0.1, 8  # 2 epochs of 4 steps
    lrs, final = schedule(base, total_steps=40, steps_per_epoch=4, warmup_epochs=2, min_lr_ratio=0.1)
    rise = torch.tensor(lrs[: warmup + 1]).diff()
    assert (rise > 0).all()
    torch.testing.assert_close(rise, torch.full_like(rise, rise[0].item()))  # linear
    assert lrs[warmup] == pytest.approx(base) and max(lrs) == pytest.approx(base)
    assert all(later < earlier for earlier, later in zip(lrs[warmup:], lrs[warmup + 1 :], strict=False))
    # The last optimizer step runs at the floor, and the schedule stays there.
    assert lrs[-1] == pytest.approx(0.1 * base) and min(lrs) == pytest.approx(0.1 * base)
    assert final == pytest.approx(0.1 * base)
    # The cosine between the peak (step 8) and the floor (step 39): a quarter of the way it is at 1/2 + cos(pi/4)/2.
    quarter = warmup + round((40 - 1 - warmup) / 4)
    progress = (quarter - warmup) / (40 - 1 - warmup)
    assert lrs[quarter] == pytest.approx(0.1 * base + 0.9 * base * 0.5 * (1 + math.cos(math.pi * progress)))


def test_warmup_longer_than_the_fit_still_reaches_the_peak():
    lrs, _ = schedule(1.0, total_steps=5, steps_per_epoch=5, warmup_epochs=10)
    assert lrs[-1] == pytest.approx(1.0)
    assert lrs == sorted(lrs)


@pytest.mark.parametrize("mixup_alpha, cutmix_alpha", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_batch_mix_gives_soft_targets(mixup_alpha, cutmix_alpha):
    task = ImageClassification(tiny_lightnet(), mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha)
    images, labels = torch.randn(8, 1, 16, 16), torch.arange(8) % 10
    mixed, targets = task.batch_mix(images, labels)
    assert mixed.shape == images.shape
    assert targets.shape == (8, 10) and targets.is_floating_point()
    torch.testing.assert_close(targets.sum(-1), torch.ones(8))
    assert (targets.max(-1).values < 1).any()  # some row mixes two classes
    assert ((targets > 0).sum(-1) <= 2).all()
    assert set(targets.nonzero()[:, 1].tolist()) <= set(labels.tolist())


def test_no_batch_mix_by_default():
    assert ImageClassification(tiny_lightnet()).batch_mix is None


def test_training_step_with_mixup_and_cutmix(tmp_path):
    task = ImageClassification(tiny_lightnet(), mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    seen = []
    task.batch_mix.register_forward_hook(lambda module, args, out: seen.append(out[1]))
    data = TensorDataset(torch.randn(32, 1, 16, 16), torch.arange(32) % 10)
    trainer = cpu_trainer(tmp_path, fast_dev_run=3)
    trainer.fit(task, train_dataloaders=DataLoader(data, batch_size=8))
    assert len(seen) == 3
    assert all(targets.shape == (8, 10) for targets in seen)
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())


def test_accuracy_is_over_samples_not_a_mean_of_batches(tmp_path):
    # 7 classes, so top-5 can miss. Batch 1 (4 samples): all right. Batch 2 (2 samples): the label ranked 2nd,
    # then the label ranked last. Over samples: top-1 4/6, top-5 5/6 (a mean of batch means would give 1/2, 3/4).
    scores = torch.arange(7, 0, -1, dtype=torch.float32)  # class 0 ranked first, class 6 last
    images = scores.expand(6, 7).reshape(6, 1, 1, 7)
    labels = torch.tensor([0, 0, 0, 0, 1, 6])
    task = ImageClassification(FixedLogits(7))
    loader = DataLoader(TensorDataset(images, labels), batch_size=4)
    (results,) = cpu_trainer(tmp_path).test(task, dataloaders=loader, verbose=False)
    assert results["test/acc1"] == pytest.approx(4 / 6)
    assert results["test/acc5"] == pytest.approx(5 / 6)


def test_top5_with_fewer_than_five_classes_is_always_right():
    task = ImageClassification(FixedLogits(3))
    task.val_acc5(torch.randn(16, 3), torch.randint(0, 3, (16,)))
    assert task.val_acc5.compute() == 1.0


def test_predict_step_returns_the_top_class_and_its_probability():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    task = ImageClassification(FixedLogits(3))
    out = task.predict_step((logits.reshape(2, 1, 1, 3), ["a.png", "b.png"]), 0)
    assert out["paths"] == ["a.png", "b.png"]
    assert out["index"] == [1, 0]
    assert out["probability"] == pytest.approx(logits.softmax(-1).max(-1).values.tolist())


@pytest.mark.slow
def test_fit_logs_the_documented_metrics_and_steps_the_schedule_per_step(tmp_path):
    calls = []

    def scheduler(optimizer, total_steps, steps_per_epoch):
        # Records what the task passes, and the scheduler built from it.
        calls.append((total_steps, steps_per_epoch))
        calls.append(WarmupCosineLR(optimizer, total_steps, steps_per_epoch, warmup_epochs=1, min_lr_ratio=0.1))
        return calls[-1]

    task = ImageClassification(tiny_lightnet(), optimizer=adamw, lr_scheduler=scheduler)
    data = DigitsDataModule(image_size=16, batch_size=16, augment=False)
    logger = CSVLogger(tmp_path, name="logs")
    limits = {"limit_train_batches": 3, "limit_val_batches": 2, "limit_test_batches": 2}
    trainer = cpu_trainer(tmp_path, logger=logger, max_epochs=2, log_every_n_steps=1, **limits)
    trainer.fit(task, datamodule=data)
    (total_steps, steps_per_epoch), lr_schedule = calls
    assert (total_steps, steps_per_epoch) == (6, 3)
    assert {"train/loss", "train/lr", "val/loss", "val/acc1", "val/acc5"} <= trainer.callback_metrics.keys()
    assert {"train/loss", "train/lr", "val/loss", "val/acc1", "val/acc5"} <= trainer.logged_metrics.keys()
    metrics = trainer.callback_metrics
    assert 0 <= metrics["val/acc1"] <= metrics["val/acc5"] <= 1

    # train/lr follows the schedule step by step (a scheduler stepped per epoch would hold it flat within one).
    logger.save()
    with open(f"{logger.log_dir}/metrics.csv") as handle:
        logged_lr = {int(row["step"]): float(row["train/lr"]) for row in csv.DictReader(handle) if row["train/lr"]}
    assert sorted(logged_lr) == list(range(6))
    for step, lr in logged_lr.items():
        assert lr == pytest.approx(1e-3 * lr_schedule.lr_factor(step)), step

    (results,) = trainer.test(task, datamodule=data, verbose=False)
    assert {"test/acc1", "test/acc5"} <= results.keys() and {"test/acc1", "test/acc5"} <= trainer.logged_metrics.keys()
    assert 0 <= results["test/acc1"] <= results["test/acc5"] <= 1


def test_the_backbone_describes_the_data_it_is_trained_on(tmp_path):
    # What the saved model says of its inputs (save_pretrained; timm's resolve_data_config) is the data's.
    names = [f"digit {i}" for i in range(10)]
    data_info = {"image_size": 16, "in_chans": 1, "num_classes": 10, "class_names": names, "mean": [0.5], "std": [0.25]}
    task = ImageClassification(tiny_lightnet(), data_info=data_info)
    cfg = task.model.pretrained_cfg
    assert task.model.default_cfg is cfg
    assert (cfg["input_size"], cfg["mean"], cfg["std"], cfg["num_classes"]) == ((1, 16, 16), (0.5,), (0.25,), 10)
    assert cfg["label_names"] == tuple(names) and cfg["classifier"] == "head"  # the rest is the model's own
    task.model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["pretrained_cfg"]
    assert saved["label_names"] == names and saved["mean"] == [0.5] and saved["input_size"] == [1, 16, 16]
    # Images used as they are: mean 0 and std 1, whatever the backbone assumed.
    unnormalised = ImageClassification(tiny_lightnet(), data_info={"image_size": 16, "in_chans": 1, "num_classes": 10})
    assert (unnormalised.model.pretrained_cfg["mean"], unnormalised.model.pretrained_cfg["std"]) == ((0.0,), (1.0,))
