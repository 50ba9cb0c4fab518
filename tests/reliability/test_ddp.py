"""Multi-process training on CPU (DDP over gloo): two processes give the loss curve of one with the doubled batch
and resume mid-epoch after all of them were killed, the ready configs run unchanged with `--trainer.devices 2`,
sample grids and predictions are written once, FID compares the images of every process, diffusion processes draw
their own noise, and a NaN on one process stops them all."""

import csv
import json
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from classification_helpers import write_digit_pngs
from reliability_helpers import (
    CLASSIFICATION_DEBUG,
    DETERMINISTIC,
    DIFFUSION_DEBUG,
    QUIET,
    callback,
    read_steps,
    run_lightnet,
    write_yaml,
)

pytestmark = pytest.mark.slow

TIMEOUT = 180  # a DDP fit of the debug configs takes ~10 s here; a hang fails the test instead of stalling it


def logged(run: Path, key: str) -> list[float]:
    """The values of `key` in the CSV logger's metrics, in logging order."""
    (metrics,) = run.rglob("metrics.csv")
    with open(metrics, newline="") as handle:
        return [float(row[key]) for row in csv.DictReader(handle) if row.get(key)]


def classification_fit(root: Path, devices: int, batch_size: int, *extra: str, killer: dict | None = None) -> Path:
    """2 epochs of 4 steps of the classification debug config (without MixUp, CutMix, jitter and schedule) on
    `devices` processes of `batch_size` each: logged by a CSVLogger, each process's batches recorded, `last.ckpt`
    every 2 steps in `<parent>/checkpoints/<name>`, a folder that a run `<name>` shares with its `<name>_resumed`."""
    root.mkdir()
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(root), "name": "csv"}}
    trainer = {"max_epochs": 2, "limit_train_batches": 4, "limit_val_batches": 2, "logger": logger}
    checkpoints = root.parent / "checkpoints" / root.name.removesuffix("_resumed")
    trainer["callbacks"] = [
        callback("reliability_helpers.RecordSteps", path=str(root / "steps")),
        callback(
            "lightning.pytorch.callbacks.ModelCheckpoint",
            dirpath=str(checkpoints),
            every_n_train_steps=2,
            save_top_k=0,
            save_last=True,
        ),
        *([killer] if killer else []),
    ]
    trainer["default_root_dir"] = str(root)
    overrides = write_yaml(root / "overrides.yaml", {"trainer": trainer})
    args = ["fit", "--config", CLASSIFICATION_DEBUG, "--config", overrides, *QUIET, *DETERMINISTIC, *extra]
    # A constant learning rate: without a schedule, configure_optimizers leaves the loader to Lightning's own restore
    # (tests/reliability/test_resume.py covers the other path, with the schedule).
    args += ["--model.init_args.lr_scheduler", "null"]
    args += ["--trainer.devices", str(devices), "--data.init_args.batch_size", str(batch_size)]
    if devices == 1:
        # The one-process reference runs the DDP strategy too (two devices get it by default): Lightning then draws
        # its batches with the same DistributedSampler permutation, so step s sees exactly the union of the two
        # processes' batches.
        args += ["--trainer.strategy", "ddp"]
    result = run_lightnet(args, cwd=root, timeout=TIMEOUT)
    expected = -signal.SIGKILL if killer else 0
    assert result.returncode == expected, result.stdout[-3000:]
    return root


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """The fit on 2 processes of batch 8; shared by the curve and the resume tests."""
    return classification_fit(tmp_path_factory.mktemp("ddp") / "two", devices=2, batch_size=8)


def test_two_processes_give_the_curve_of_one_with_the_doubled_batch(tmp_path, two_processes):
    two = two_processes
    one = classification_fit(tmp_path / "one", devices=1, batch_size=16)

    # Same global batches: at every step the two processes' labels together are those of the single process.
    rank0, rank1, reference = read_steps(two / "steps", 0), read_steps(two / "steps", 1), read_steps(one / "steps")
    assert [row["step"] for row in rank0] == [row["step"] for row in rank1] == list(range(1, 9))
    for left, right, both in zip(rank0, rank1, reference, strict=True):
        assert len(left["labels"]) == len(right["labels"]) == 8 and len(both["labels"]) == 16
        assert Counter(left["labels"]) + Counter(right["labels"]) == Counter(both["labels"])
    # The logged loss is the global batch's (averaged over processes), written once per step, and the same curve.
    curve, reference_curve = logged(two, "train/loss"), logged(one, "train/loss")
    assert len(curve) == len(reference_curve) == 8
    torch.testing.assert_close(torch.tensor(curve), torch.tensor(reference_curve), rtol=1e-4, atol=1e-5)
    per_process = [(left["loss"] + right["loss"]) / 2 for left, right in zip(rank0, rank1, strict=True)]
    torch.testing.assert_close(torch.tensor(curve), torch.tensor(per_process), rtol=1e-5, atol=1e-6)
    # Validation splits the same 32 images across the processes and reduces the metrics over both.
    for key in ("val/loss", "val/acc1"):
        assert len(logged(two, key)) == 2
        torch.testing.assert_close(torch.tensor(logged(two, key)), torch.tensor(logged(one, key)), rtol=1e-4, atol=1e-5)


def test_both_processes_killed_mid_epoch_resume_where_they_stopped(tmp_path, two_processes):
    # The whole process group dies (a lost node) as the batch after step 7 starts; last.ckpt is from step 6, in the
    # middle of epoch 1. The same command with --ckpt_path last finishes the fit on 2 processes.
    killer = callback("reliability_helpers.SigkillAtStep", step=7, group=True)
    classification_fit(tmp_path / "run", 2, 8, killer=killer)
    resumed = classification_fit(tmp_path / "run_resumed", 2, 8, "--ckpt_path", "last")
    for rank in (0, 1):
        after, reference = read_steps(resumed / "steps", rank), read_steps(two_processes / "steps", rank)
        assert [row["step"] for row in after] == [7, 8]
        assert [row["labels"] for row in after] == [row["labels"] for row in reference[6:]]  # each its own share
        torch.testing.assert_close(
            torch.tensor([row["loss"] for row in after]), torch.tensor([row["loss"] for row in reference[6:]])
        )
    final = torch.load(tmp_path / "checkpoints" / "run" / "last.ckpt", map_location="cpu", weights_only=True)
    expected = torch.load(
        two_processes.parent / "checkpoints" / "two" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert final["global_step"] == expected["global_step"] == 8
    for name, value in expected["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][name], value, msg=name)


def test_the_diffusion_config_runs_on_two_processes_with_one_grid_and_a_shared_fid(tmp_path):
    # configs/diffusion/debug.yaml as it is, with --trainer.devices 2, and an FID (on pixel features) added to its
    # callbacks; RecordFID, after it, notes what each process computed.
    callbacks = yaml.safe_load(Path(DIFFUSION_DEBUG).read_text())["trainer"]["callbacks"]
    features = {"class_path": "reliability_helpers.PixelFeatures"}
    callbacks += [
        callback("lightnet_vision.callbacks.FID", feature=features, image_size=[1, 8, 8], max_batches=2),
        callback("reliability_helpers.RecordFID", path=str(tmp_path / "fid")),
        callback("reliability_helpers.RecordSteps", path=str(tmp_path / "steps")),
    ]
    overrides = write_yaml(tmp_path / "overrides.yaml", {"trainer": {"callbacks": callbacks}})
    args = ["fit", "--config", DIFFUSION_DEBUG, "--config", overrides, *QUIET, "--trainer.devices", "2"]
    result = run_lightnet(args, cwd=tmp_path, timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:]

    (run,) = (tmp_path / "runs" / "debug_diffusion").iterdir()  # one run folder for both processes
    assert [path.name for path in (run / "sample_grids").iterdir()] == ["step0000004.png"]  # written once, by rank 0
    assert sorted(path.name for path in run.rglob("*.ckpt")) == ["epoch=0-step=4.ckpt", "last.ckpt"]
    fid = [json.loads((tmp_path / f"fid.rank{rank}.json").read_text()) for rank in (0, 1)]
    # Each process scored its own 2 batches of 16; the FID compares the 64 images of both, and both agree on it.
    assert [row["local"] for row in fid] == [32, 32] and [row["synced"] for row in fid] == [64, 64]
    assert fid[0]["fid"] == fid[1]["fid"] > 0
    # The processes draw their own noise and timesteps (not the same ones for different images).
    rank0, rank1 = read_steps(tmp_path / "steps", 0), read_steps(tmp_path / "steps", 1)
    assert all(left["rng"] != right["rng"] for left, right in zip(rank0, rank1, strict=True))


def test_a_nan_on_one_process_stops_both_with_the_step(tmp_path):
    callbacks = [callback("reliability_helpers.PoisonBatch", step=2, ranks=[1])]
    trainer = {"callbacks": callbacks, "logger": False, "default_root_dir": str(tmp_path)}
    overrides = write_yaml(tmp_path / "overrides.yaml", {"trainer": trainer})
    args = ["fit", "--config", CLASSIFICATION_DEBUG, "--config", overrides, *QUIET, "--trainer.devices", "2"]
    result = run_lightnet(args, cwd=tmp_path, timeout=TIMEOUT)
    assert result.returncode != 0
    assert "NonFiniteLossError: non-finite training loss" in result.stdout
    assert "at global step 2 " in result.stdout
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 3
    assert all(torch.isfinite(value).all() for value in checkpoint["state_dict"].values())


def test_predict_on_two_processes_writes_each_output_once(tmp_path):
    # 3 samples over 2 processes: the sampler pads with a repeat, which must not reach the files.
    predict = ["--model.init_args.predict_classes", "[0, 1, 2]", "--model.init_args.samples_per_class", "1"]
    args = ["predict", "--config", DIFFUSION_DEBUG, *QUIET, "--trainer.devices", "2", *predict]
    writer = ["--trainer.callbacks+=lightnet_vision.callbacks.SampleWriter", "--trainer.callbacks.output_dir"]
    result = run_lightnet([*args, *writer, str(tmp_path / "out")], cwd=tmp_path, timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:]
    with np.load(tmp_path / "out" / "samples.npz") as samples:
        assert samples["arr_0"].shape == (3, 8, 8, 1) and samples["labels"].tolist() == [0, 1, 2]
    assert sorted(
        str(path.relative_to(tmp_path / "out" / "samples")) for path in (tmp_path / "out").rglob("*.png")
    ) == [
        "0/0.png",
        "1/0.png",
        "2/0.png",
    ]

    # Classification: one CSV row per image, written by rank 0 into the run's log folder.
    images = write_digit_pngs(tmp_path / "digits", 5)
    args = ["predict", "--config", CLASSIFICATION_DEBUG, *QUIET, "--trainer.devices", "2"]
    result = run_lightnet(
        [*args, "--data.init_args.predict_dir", str(tmp_path / "digits")], cwd=tmp_path, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stdout[-3000:]
    (table,) = (tmp_path / "runs").rglob("predictions.csv")
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["path"] for row in rows) == sorted(str(path) for path in images)
