"""The two quickstarts on the bundled digits.

    python -m lightnet_vision.demo classify [extra CLI arguments]   # make demo
    python -m lightnet_vision.demo generate [--fast]                  # make demo-generate

`classify` fits configs/classification/digits.yaml, tests the best checkpoint and prints its accuracy.
`generate` fits the autoencoder (configs/autoencoder/digits.yaml), then the class-conditional LightNet-DiT in its
latent space (configs/diffusion/digits.yaml), samples every class with guidance, writes a sample grid PNG and
`samples.npz`, and scores the samples against the real digits (`lightnet_vision.metrics.digits`).
"""

import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid, save_image

from lightnet_vision.checkpoints import load_checkpoint
from lightnet_vision.cli import build_cli
from lightnet_vision.metrics.digits import score_digit_samples


def classify(argv: list[str]) -> float:
    if "--config" not in argv:
        argv = ["--config", "configs/classification/digits.yaml", *argv]
    cli = build_cli(argv, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    best = cli.trainer.checkpoint_callback.best_model_path
    # The checkpoint's state_dict holds the EMA weights when EMAWeightAveraging is on. trainer.test(ckpt_path=...)
    # inside the fitting process would restore the raw weights instead, so they are loaded here.
    cli.model.load_state_dict(load_checkpoint(best)["state_dict"])
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule)
    accuracy = results[0]["test/acc1"]
    print(f"\nbest checkpoint: {shown(best)}")
    print(f"test top-1 accuracy: {accuracy:.2%}")
    print(f"curves: tensorboard --logdir {shown(cli.trainer.log_dir)}")
    return accuracy


def shown(path: str | Path) -> str:
    """`path` relative to the working directory when it lies under it (as the configs write it)."""
    path = Path(path)
    return str(path.relative_to(Path.cwd())) if path.is_absolute() and path.is_relative_to(Path.cwd()) else str(path)


def generate(argv: list[str]) -> dict[str, float]:
    fast = "--fast" in argv  # a smoke run of a few steps, for tests
    extra = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    autoencoder = build_cli(["--config", "configs/autoencoder/digits.yaml", *(extra if fast else [])], run=False)
    autoencoder.trainer.fit(autoencoder.model, datamodule=autoencoder.datamodule)
    checkpoint = autoencoder.trainer.checkpoint_callback.last_model_path
    print(f"\nautoencoder: {shown(checkpoint)} (latent scale {autoencoder.model.latent_scale.item():.3f})")

    diffusion_args = ["--config", "configs/diffusion/digits.yaml", "--model.init_args.first_stage", checkpoint]
    diffusion = build_cli([*diffusion_args, *(extra if fast else [])], run=False)
    diffusion.trainer.fit(diffusion.model, datamodule=diffusion.datamodule)
    task = diffusion.model.eval()  # with EMAWeightAveraging, the EMA weights are in place after fit

    samples_per_class = 2 if fast else 50
    labels = torch.arange(10).repeat_interleave(samples_per_class)
    images = torch.cat([
        task.generate(chunk.to(task.device), generator=torch.Generator().manual_seed(index))
        for index, chunk in enumerate(labels.split(100))
    ]).cpu()  # fmt: skip
    out = Path(diffusion.trainer.log_dir or diffusion.trainer.default_root_dir)
    grid_rows = [images[labels == digit][:10] for digit in range(10)]
    grid = make_grid((torch.cat(grid_rows) + 1) / 2, nrow=len(grid_rows[0]), padding=1, pad_value=1.0)
    save_image(torch.nn.functional.interpolate(grid[None], scale_factor=4, mode="nearest")[0], out / "samples.png")

    np.savez_compressed(out / "samples.npz", images=images.numpy(), labels=labels.numpy())
    scores = score_digit_samples(images, labels)
    print(f"\nsample grid (one row per digit): {shown(out / 'samples.png')}; all samples: {shown(out / 'samples.npz')}")
    print(f"{len(labels)} samples, guidance {task.guidance_scale}, against the real training digits:")
    print(f"  agreement {scores['agreement']:.1%}  (a classifier trained on real digits names the class asked for)")
    print(f"  recall    {scores['recall']:.2f}   (share of real digits the samples cover; held-out real digits: 0.92)")
    print(f"  precision {scores['precision']:.2f}   (share of samples that lie among real digits; held-out real: 0.89)")
    print(f"  variety   {scores['variety']:.2f}   (in-class spread, samples over real digits: 1 is as varied)")
    print(f"curves and sample grids: tensorboard --logdir {shown(out)}")
    return scores


def main(argv: list[str] | None = None) -> float | dict[str, float]:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in ("classify", "generate") else "classify"
    return generate(argv) if command == "generate" else classify(argv)


if __name__ == "__main__":
    main()
