"""Image classification: a thin LightningModule around an injected backbone (a LightNet classifier by default)."""

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics.classification import MulticlassAccuracy
from torchvision.transforms import v2

from lightnet_vision.checks import check_classifier_data
from lightnet_vision.datamodules.data_info import DataInfo
from lightnet_vision.tasks.base import Task
from lightnet_vision.tasks.optim import OptimizerCallable, SchedulerCallable
from lightnet_vision.tasks.schedules import WarmupCosineLR


def _adamw(params: list) -> Optimizer:
    return torch.optim.AdamW(params, lr=5e-4, weight_decay=0.05)


def _warmup_cosine(optimizer: Optimizer, total_steps: int, steps_per_epoch: int) -> LRScheduler:
    return WarmupCosineLR(optimizer, total_steps, steps_per_epoch, warmup_epochs=5.0)


class ImageClassification(Task):
    """Train, evaluate and predict with an image classifier.

    Args:
        model: The backbone; it must take and expose `num_classes` (timm's interface). The CLI sets its
            `num_classes`, `in_chans` and `img_size` (where it takes them) from the data: a config never types them.
            A backbone with timm's `pretrained_cfg` (LightNet, timm's models) gets the data's input size,
            normalisation and class names written into it, so that what it saves (`save_pretrained`) and
            timm's `resolve_data_config` describe the data it was trained on.
        optimizer: Called with the parameter groups (no weight decay on biases, norms and 1-D parameters).
        lr_scheduler: Called with the optimizer, the fit's total optimizer steps and the steps per epoch; stepped
            every optimizer step. None keeps the learning rate constant.
        label_smoothing: Label smoothing of the training cross-entropy.
        mixup_alpha: MixUp's Beta parameter; 0 disables MixUp.
        cutmix_alpha: CutMix's Beta parameter; 0 disables CutMix. With both on, each batch picks one at random.
        data_info: The data's description (from the DataModule, through the CLI), kept in the checkpoint so that
            `predict` names its answers and reads images as the training did.
        compile: `torch.compile` the backbone in place before the first step (`nn.Module.compile`: parameter
            names, checkpoints and EMA weights stay those of the eager model). Worth it on GPUs; the first steps
            are slower while it compiles.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerCallable = _adamw,
        lr_scheduler: SchedulerCallable | None = _warmup_cosine,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        data_info: dict[str, Any] | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(model, optimizer, lr_scheduler, data_info, compile)
        self.save_hyperparameters()
        self.keep_config_hyperparameters()
        describe_data(model, self.data_info)
        self.label_smoothing = label_smoothing
        num_classes = model.num_classes
        self.batch_mix = _batch_mix(mixup_alpha, cutmix_alpha, num_classes)
        top5 = min(5, num_classes)
        self.val_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.test_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")

    required_backbone_arguments = ("num_classes",)

    @classmethod
    def backbone_arguments(cls, data_info: DataInfo, task_arguments: dict[str, Any]) -> dict[str, Any]:
        # timm's names, which our classifier and timm's models share.
        return {"num_classes": data_info.num_classes, "in_chans": data_info.in_chans, "img_size": data_info.image_size}

    @property
    def class_names(self) -> list[str] | None:
        return None if self.data_info is None else self.data_info.class_names

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        if self.batch_mix is not None:
            images, labels = self.batch_mix(images, labels)  # labels become soft targets [B, classes]
        loss = F.cross_entropy(self(images), labels, label_smoothing=self.label_smoothing)
        # Averaged over the processes, so the curve under DDP is that of the global batch.
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.log("val/loss", F.cross_entropy(logits, labels), prog_bar=True, sync_dist=True)
        self.val_acc1(logits, labels)
        self.val_acc5(logits, labels)
        self.log("val/acc1", self.val_acc1, prog_bar=True)
        self.log("val/acc5", self.val_acc5)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.test_acc1(logits, labels)
        self.test_acc5(logits, labels)
        self.log("test/acc1", self.test_acc1)
        self.log("test/acc5", self.test_acc5)

    def predict_step(self, batch: tuple[Tensor, list[str]], batch_idx: int) -> dict:
        images, paths = batch
        probs = self(images).float().softmax(dim=-1)
        confidence, index = probs.max(dim=-1)
        return {"paths": list(paths), "index": index.tolist(), "probability": confidence.tolist()}

    def check_data(self) -> None:
        # Classes, channels and patch grid must agree with the data before the first step (lightnet_vision/checks.py).
        check_classifier_data(self.trainer.datamodule, self.model)


def describe_data(model: nn.Module, data_info: DataInfo | None) -> None:
    """Writes the data's input size, normalisation and class names into the backbone's timm `pretrained_cfg`
    (`input_size`, `mean`, `std`, `num_classes`, `label_names`); data without a normalisation is used as it is (mean
    0, std 1). A backbone without a pretrained_cfg is left alone."""
    cfg = getattr(model, "pretrained_cfg", None)
    if data_info is None or not isinstance(cfg, dict):
        return
    channels = data_info.in_chans
    update: dict[str, Any] = {
        "input_size": (channels, data_info.image_size, data_info.image_size),
        "mean": tuple(data_info.mean) if data_info.mean is not None else (0.0,) * channels,
        "std": tuple(data_info.std) if data_info.std is not None else (1.0,) * channels,
    }
    if data_info.num_classes is not None:
        update["num_classes"] = data_info.num_classes
    if data_info.class_names is not None:
        update["label_names"] = tuple(data_info.class_names)
    model.pretrained_cfg = model.default_cfg = {**cfg, **update}


def _batch_mix(mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> v2.Transform | None:
    mixes = []
    if mixup_alpha > 0:
        mixes.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        mixes.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)
