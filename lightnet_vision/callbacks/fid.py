"""FID of generated against real images with torchmetrics, and improved precision, recall and in-class variety in the
same features, computed during validation (DDP-safe)."""

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from lightnet_vision.callbacks.protocols import SampleGenerator, require
from lightnet_vision.metrics.sample_quality import precision_recall, variety_ratio


class FID(Callback):
    """At each validation, every image batch is matched by as many samples for the same labels; the Fréchet
    distance between the two feature sets is logged as `val/fid`. Each process handles its own share of the
    validation data and torchmetrics sums the statistics across processes.

    With `precision_recall` on, the same features (captured from the feature network as FID computes them, so
    nothing is computed twice) also give `val/precision` and `val/recall` (improved precision and recall,
    Kynkäänniemi et al. 2019, with k-NN balls of `k`) and `val/variety` (in-class spread of the samples over that
    of the real images; see `lightnet_vision.metrics.sample_quality`). They keep every feature vector until the
    epoch ends and gather them across processes: cheap next to sampling, and meaningful from a few hundred images.

    Args:
        feature: A feature network (images in [0, 1] in, `[B, d]` features out), or the width of InceptionV3's
            features (64, 192, 768 or 2048) when `weights_path` points to its weights (torch-fidelity's
            `pt_inception-2015-12-05` file); nothing is downloaded.
        weights_path: Local InceptionV3 weights for an integer `feature`.
        every_n_epochs: Epochs between FID evaluations.
        max_batches: Validation batches used per process (None: all).
        image_size: `(C, H, W)` of the images, needed by torchmetrics to probe a custom feature network.
        precision_recall: Also log `val/precision`, `val/recall` and `val/variety`.
        k: Neighbours that set the k-NN balls of precision and recall.
    """

    def __init__(
        self,
        feature: int | nn.Module = 2048,
        weights_path: str | None = None,
        every_n_epochs: int = 1,
        max_batches: int | None = None,
        image_size: tuple[int, int, int] = (3, 299, 299),
        precision_recall: bool = True,
        k: int = 3,
    ) -> None:
        super().__init__()
        if isinstance(feature, int) and weights_path is None:
            raise ValueError("FID with InceptionV3 features needs weights_path (a local file): nothing is downloaded")
        extra = {"feature_extractor_weights_path": weights_path} if weights_path else {}
        self.metric = FrechetInceptionDistance(feature, normalize=True, input_img_size=image_size, **extra)
        self.metric.requires_grad_(False)
        self.inception = isinstance(feature, int)
        self.every_n_epochs = every_n_epochs
        self.max_batches = max_batches
        self.precision_recall = precision_recall
        self.k = k
        self._features: dict[str, list[torch.Tensor]] = {"real": [], "fake": [], "labels": []}
        self._capture_into: str | None = None
        if precision_recall:
            self.metric.inception.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        if self._capture_into is not None:
            self._features[self._capture_into].append(output.detach().flatten(1).float())

    def _active(self, trainer: Trainer) -> bool:
        return not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.metric.to(pl_module.device)
        self.metric.reset()
        self._features = {"real": [], "fake": [], "labels": []}

    @torch.no_grad()
    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not self._active(trainer) or isinstance(batch, dict):  # cached latents hold no real images
            return
        if self.max_batches is not None and batch_idx >= self.max_batches:
            return
        images, labels = batch
        generator = torch.Generator().manual_seed(batch_idx + 1_000_003 * trainer.global_rank)
        require(pl_module, SampleGenerator, "FID")
        fake = pl_module.generate(labels if pl_module.class_conditional else None, images.shape[0], generator)
        self._capture_into = "real"
        self.metric.update(self._unit(images), real=True)
        self._capture_into = "fake"
        self.metric.update(self._unit(fake), real=False)
        self._capture_into = None
        self._features["labels"].append(labels if pl_module.class_conditional else torch.zeros_like(labels))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._active(trainer) or self.metric.fake_features_num_samples == 0:
            return
        pl_module.log("val/fid", self.metric.compute(), sync_dist=False)  # already reduced across processes
        if self.precision_recall:
            real, fake, labels = (self._gathered(pl_module, key) for key in ("real", "fake", "labels"))
            if len(real) > self.k and len(fake) > self.k:
                scores = precision_recall(real, fake, self.k)
                pl_module.log("val/precision", scores.precision, sync_dist=False)
                pl_module.log("val/recall", scores.recall, sync_dist=False)
                pl_module.log("val/variety", variety_ratio(fake, labels, real, labels), sync_dist=False)
        self._features = {"real": [], "fake": [], "labels": []}

    def _gathered(self, pl_module: LightningModule, key: str) -> torch.Tensor:
        """This process's `key` tensors concatenated, then gathered from every process (all hold as many)."""
        local = torch.cat(self._features[key])
        gathered = pl_module.all_gather(local)
        return (gathered.flatten(0, 1) if gathered.ndim > local.ndim else gathered).cpu()

    def _unit(self, images: torch.Tensor) -> torch.Tensor:
        # [-1, 1] -> [0, 1]; InceptionV3 wants three channels, so grayscale is repeated.
        images = ((images.float() + 1) / 2).clamp(0, 1)
        if self.inception and images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return images
