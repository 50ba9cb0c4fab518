"""LatentDiffusion end to end on 8x8 digits: fit through the CLI (pixel space and the tiny autoencoder's latents),
deterministic validation and sampling, `predict` files, resuming the EMA, and the sample-grid and FID callbacks."""

import numpy as np
import pytest
import torch
import yaml
from classification_helpers import cpu_trainer
from diffusion_helpers import (
    DIFFUSION_CONFIG,
    QUIET,
    EMAProbe,
    latent_diffusion_args,
    pixel_diffusion_args,
    run_cli,
    tiny_digits,
    tiny_dit,
    wake,
)
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from lightnet_vision.callbacks import FID, SampleImages
from lightnet_vision.datamodules import LatentCacheDataModule
from lightnet_vision.datamodules.latent_cache import write_latent_cache
from lightnet_vision.diffusion import GaussianDiffusion
from lightnet_vision.models import FirstStage
from lightnet_vision.tasks import LatentDiffusion
from lightnet_vision.tasks.latent_diffusion import to_uint8

pytestmark = pytest.mark.slow

FAST_DEV_RUN = ["--trainer.fast_dev_run", "true"]
# A 2-step fit that validates (2 batches) and checkpoints at the end of its only epoch.
TWO_STEPS = [
    *("--trainer.max_steps", "2", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2"),
    *("--trainer.check_val_every_n_epoch", "1"),
]


def callbacks_config(path, checkpoint_dir, probe: bool = False) -> str:
    """A second config file for the diffusion config's callbacks: a checkpoint at every validation in `checkpoint_dir`,
    and an EMA with decay 0.5 from the first step, so that the EMA and the current weights differ clearly after two
    steps. jsonargparse merges the init_args of a list item into those of the same class at the same position in the
    first config, so every argument that matters here is given.

    (With the config's `save_top_k: 0`, Lightning writes last.ckpt only at on_train_end, after the EMA callback has
    copied the average into the model, so the checkpoint would hold the EMA weights twice.)
    """
    checkpoint = {"dirpath": str(checkpoint_dir), "save_last": True, "save_top_k": -1, "monitor": None}
    checkpoint |= {"every_n_epochs": 1, "every_n_train_steps": 0, "train_time_interval": None}
    ema = {"decay": 0.5, "update_every_n_steps": 1, "update_starting_at_step": 0, "update_starting_at_epoch": None}
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": checkpoint},
        {"class_path": "lightning.pytorch.callbacks.EMAWeightAveraging", "init_args": ema},
    ]
    if probe:
        callbacks.append({"class_path": "diffusion_helpers.EMAProbe"})
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    return str(path)


def tiny_task(**overrides) -> LatentDiffusion:
    # v-prediction on the cosine schedule (as the config) keeps the samples of a random model mostly inside [-1, 1].
    diffusion = GaussianDiffusion(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    kwargs = {"model": wake(tiny_dit()), "diffusion": diffusion}
    kwargs |= {"sampler": "ddim", "num_sampling_steps": 2}
    return LatentDiffusion(**{**kwargs, **overrides})


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """The pixel-space config fitted for 2 steps with EMA (decay 0.5), recording hyperparameters that `predict`
    must keep (predict_seed: in no config) or override (samples_per_class, guidance_scale)."""
    root = tmp_path_factory.mktemp("diffusion")
    callbacks = callbacks_config(root / "callbacks.yaml", root / "checkpoints")
    recorded = ["--model.init_args.predict_seed", "7", "--model.init_args.samples_per_class", "5"]
    recorded += ["--model.init_args.guidance_scale", "1.0"]
    args = ["fit", "--config", DIFFUSION_CONFIG, "--config", callbacks, *QUIET, *pixel_diffusion_args(), *TWO_STEPS]
    cli = run_cli(root, [*args, *recorded])
    return root, cli, root / "checkpoints" / "last.ckpt"


def test_fast_dev_run_in_pixel_space(tmp_path):
    cli = run_cli(tmp_path, ["fit", "--config", DIFFUSION_CONFIG, *QUIET, *pixel_diffusion_args(), *FAST_DEV_RUN])
    task, data = cli.model, cli.datamodule
    assert cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])
    # Set from the data's description: classes, class names and the latent side (pixel space: the image size).
    assert task.model.num_classes == data.num_classes == 10
    assert task.data_info == data.data_info and task.class_names == data.class_names
    assert task.model.input_size == data.image_size == 8
    assert task.latent_shape() == (1, 8, 8)
    assert task.diffusion.prediction_type == "v_prediction"


def test_fast_dev_run_in_autoencoder_latents(tiny_autoencoder, tmp_path):
    _, checkpoint = tiny_autoencoder
    args = ["fit", "--config", DIFFUSION_CONFIG, *QUIET, *latent_diffusion_args(checkpoint), *FAST_DEV_RUN]
    cli = run_cli(tmp_path, args)
    task = cli.model
    assert cli.trainer.global_step == 1 and torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert task.latent_shape() == (4, 4, 4)  # 8x8 digits through the 2x autoencoder
    assert task.first_stage.scale == pytest.approx(tiny_autoencoder[0].model.latent_scale.item())
    # The frozen first stage is not part of the trained, averaged and checkpointed module.
    assert not any(name.startswith("_first_stage") or ".vae." in name for name in task.state_dict())
    images = task.generate(torch.tensor([0, 7]), generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 1, 8, 8) and images.abs().max() <= 1


def test_validation_loss_is_deterministic(tmp_path):
    task, data = tiny_task(), tiny_digits()
    trainer = cpu_trainer(tmp_path, limit_val_batches=2)
    losses = []
    for seed in (1, 2):  # whatever the global random state
        torch.manual_seed(seed)
        (metrics,) = trainer.validate(task, datamodule=data, verbose=False)
        losses.append(metrics["val/loss"])
    assert losses[0] == losses[1] and np.isfinite(losses[0])


def test_generate_is_deterministic_for_a_seed():
    task = tiny_task().eval()
    labels = torch.tensor([0, 3, 3])
    first = task.generate(labels, generator=torch.Generator().manual_seed(11))
    again = task.generate(labels, generator=torch.Generator().manual_seed(11))
    other = task.generate(labels, generator=torch.Generator().manual_seed(12))
    assert first.shape == (3, 1, 8, 8)
    assert first.min() >= -1 and first.max() <= 1
    assert (first.abs() < 1).float().mean() > 0.5  # mostly not clipped, so the comparisons below mean something
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)


def test_generate_guidance_paths_agree():
    task = tiny_task(sampler="dpm++").eval()
    labels = torch.tensor([1, 5])

    def generate(labels, scale):
        return task.generate(labels, 2, torch.Generator().manual_seed(3), guidance_scale=scale)

    # Scale 1 takes the plain conditional path, any other scale the batched guidance path: they must meet at 1.
    torch.testing.assert_close(generate(labels, 1.0), generate(labels, 1.0 + 1e-6), rtol=1e-3, atol=1e-3)
    # Scale 0 is the null class alone, which is also what an unconditional request samples.
    torch.testing.assert_close(generate(labels, 0.0), generate(None, 0.0), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(generate(labels, 1.0), generate(labels, 4.0), atol=1e-3)


def test_unconditional_task_samples_without_labels():
    task = tiny_task(model=wake(tiny_dit(num_classes=0)), class_conditional=False, samples_per_class=3).eval()
    assert task.generate(None, 3, torch.Generator().manual_seed(0)).shape == (3, 1, 8, 8)
    labels, indices = next(iter(task.predict_dataloader()))
    assert labels.tolist() == [-1, -1, -1] and indices.tolist() == [0, 1, 2]


def test_predict_dataloader_lists_each_class_samples_per_class_times():
    task = tiny_task(predict_classes=[4, 2], samples_per_class=3, predict_batch_size=4)
    batches = list(task.predict_dataloader())
    assert [len(labels) for labels, _ in batches] == [4, 2]
    assert torch.cat([labels for labels, _ in batches]).tolist() == [4, 4, 4, 2, 2, 2]
    assert torch.cat([indices for _, indices in batches]).tolist() == list(range(6))
    every_class = tiny_task(samples_per_class=1)
    assert next(iter(every_class.predict_dataloader()))[0].tolist() == list(range(10))


def test_trains_from_a_latent_cache(tmp_path):
    write_latent_cache(tiny_digits(val_fraction=0.1, test_fraction=0.8), FirstStage.load("pixel"), tmp_path)
    data = LatentCacheDataModule(str(tmp_path), batch_size=8, num_workers=0)
    task = tiny_task()
    before = {name: value.clone() for name, value in task.model.named_parameters()}
    trainer = cpu_trainer(tmp_path, fast_dev_run=True)
    trainer.fit(task, datamodule=data)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["val/loss"])
    assert any(not torch.equal(value, before[name]) for name, value in task.model.named_parameters())


def test_fit_checkpoint_holds_ema_and_current_weights(fitted):
    _, cli, checkpoint = fitted
    assert cli.trainer.global_step == 2 and checkpoint.is_file()
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2
    assert saved["state_dict"].keys() == saved["current_model_state"].keys()
    assert any(not torch.equal(saved["state_dict"][k], v) for k, v in saved["current_model_state"].items())


def test_predict_writes_sample_files_with_command_line_overrides(fitted, tmp_path):
    root, _, checkpoint = fitted
    out = tmp_path / "out"
    overrides = ["--model.init_args.predict_classes", "[1, 3]", "--model.init_args.samples_per_class", "2"]
    overrides += ["--model.init_args.guidance_scale", "3.0"]
    writer = "--trainer.callbacks+=lightnet_vision.callbacks.SampleWriter"
    overrides += [writer, "--trainer.callbacks.output_dir", str(out)]
    args = ["predict", "--config", DIFFUSION_CONFIG, *QUIET, *pixel_diffusion_args(), "--ckpt_path", str(checkpoint)]
    cli = run_cli(tmp_path, [*args, *overrides])
    task = cli.model
    # Command line > config file > checkpoint > defaults.
    assert (task.samples_per_class, task.guidance_scale) == (2, 3.0)
    assert task.predict_seed == 7  # only in the checkpoint
    assert task.sampler == "dpm++"  # from the config file

    # Sampled with the checkpoint's state_dict: the EMA weights.
    ema = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for name, value in task.state_dict().items():
        torch.testing.assert_close(value, ema[name], rtol=0, atol=0, msg=name)

    files = sorted(path.relative_to(out / "samples").as_posix() for path in (out / "samples").rglob("*.png"))
    assert files == ["1/0.png", "1/1.png", "3/0.png", "3/1.png"]
    with np.load(out / "samples.npz") as npz:
        images, labels = npz["arr_0"], npz["labels"]
    assert images.dtype == np.uint8 and images.shape == (4, 8, 8, 1)
    assert labels.tolist() == [1, 1, 3, 3]
    for row, (label, index) in enumerate([(1, 0), (1, 1), (3, 0), (3, 1)]):
        png = np.asarray(Image.open(out / "samples" / str(label) / f"{index}.png"))
        np.testing.assert_array_equal(png, images[row, ..., 0])
    # The same images again from the task, guidance 3: sample i starts from noise seeded by (seed 7, index i).
    shape = task.latent_shape()
    noise = torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed(7 * 1_000_003 + i)) for i in range(4)]
    )
    expected = to_uint8(task.generate(torch.tensor([1, 1, 3, 3]), noise=noise)).numpy()
    np.testing.assert_array_equal(images, expected)


def test_predicted_samples_do_not_depend_on_the_batch_size(fitted):
    _, _, checkpoint = fitted
    task = LatentDiffusion.load_from_checkpoint(checkpoint).eval()
    task.sampler, task.predict_classes, task.samples_per_class = "ddim", [2, 5], 3
    outputs = {}
    for batch_size in (6, 4):
        task.predict_batch_size = batch_size
        batches = enumerate(task.predict_dataloader())
        outputs[batch_size] = torch.cat([task.predict_step(batch, i)["images"] for i, batch in batches])
    torch.testing.assert_close(outputs[6], outputs[4], rtol=0, atol=0)


def test_resume_restores_the_ema(fitted, tmp_path):
    # The probe records the EMA callback's averaged model at on_train_start, which runs after the checkpoint has been
    # restored and before the first new optimizer step, and again after that step's EMA update.
    _, _, checkpoint = fitted
    callbacks = callbacks_config(tmp_path / "callbacks.yaml", tmp_path / "checkpoints", probe=True)
    args = ["fit", "--config", DIFFUSION_CONFIG, "--config", callbacks, *QUIET, *pixel_diffusion_args(), *TWO_STEPS]
    cli = run_cli(tmp_path, [*args, "--trainer.max_steps", "3", "--ckpt_path", str(checkpoint)])
    assert cli.trainer.global_step == 3
    (probe,) = [callback for callback in cli.trainer.callbacks if isinstance(callback, EMAProbe)]
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ema, current = saved["state_dict"], saved["current_model_state"]

    start = probe.at_start
    assert start["step"] == 2
    for name in ema:
        torch.testing.assert_close(start["average"][name], ema[name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(start["current"][name], current[name], rtol=0, atol=0, msg=name)
    # One more step continues the restored average: EMA_3 = 0.5 EMA_2 + 0.5 W_3.
    (step,) = probe.after_step.values()
    assert step["step"] == 3
    for name, value in ema.items():
        if value.is_floating_point():
            expected = 0.5 * value + 0.5 * step["current"][name]
            torch.testing.assert_close(step["average"][name], expected, msg=name)


def test_sample_images_writes_a_grid_and_logs_it(tmp_path):
    task, data = tiny_task(), tiny_digits()
    callback = SampleImages(every_n_steps=1, classes=[0, 2], samples_per_class=3, num_steps=2)
    logger = TensorBoardLogger(save_dir=tmp_path, name="tb")
    trainer = cpu_trainer(
        tmp_path,
        logger=logger,
        callbacks=[callback],
        max_steps=1,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    trainer.fit(task, datamodule=data)
    (path,) = (tmp_path / "tb" / "version_0" / "sample_grids").glob("*.png")
    assert path.name == "step0000001.png"
    with Image.open(path) as image:
        # 3 columns and 2 rows of 8x8 samples with 1-pixel padding.
        assert image.size == (3 * 9 + 1, 2 * 9 + 1)
        pixels = np.asarray(image.convert("RGB"))
    assert callback.labels(task).tolist() == [0, 0, 0, 2, 2, 2]
    # Fixed noise: the grid can be drawn again, identically (up to 8-bit rounding).
    grid = callback.grid(task.eval())
    np.testing.assert_allclose(pixels, (grid.permute(1, 2, 0).numpy() * 255), atol=1)

    events = EventAccumulator(str(logger.log_dir))
    events.Reload()
    assert "samples" in events.Tags()["images"]


def test_sample_images_waits_for_every_n_steps(tmp_path):
    callback = SampleImages(every_n_steps=5, classes=[0], samples_per_class=2, num_steps=2)
    trainer = cpu_trainer(tmp_path, callbacks=[callback], max_steps=2, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(tiny_task(), datamodule=tiny_digits())
    assert not list(tmp_path.rglob("sample_grids"))


def test_fid_callback_logs_a_finite_value(tmp_path):
    task, data = tiny_task(), tiny_digits()
    fid = FID(feature=nn.Sequential(nn.Flatten(), nn.Linear(64, 8)), image_size=(1, 8, 8), max_batches=2)
    trainer = cpu_trainer(tmp_path, callbacks=[fid], limit_val_batches=3)
    (metrics,) = trainer.validate(task, datamodule=data, verbose=False)
    assert np.isfinite(metrics["val/fid"]) and metrics["val/fid"] > 0
    # Only max_batches of 16 real digits were compared, against as many samples.
    assert fid.metric.real_features_num_samples == fid.metric.fake_features_num_samples == 32


def test_fid_needs_local_inception_weights():
    with pytest.raises(ValueError, match="weights_path"):
        FID(feature=2048)
