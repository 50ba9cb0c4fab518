"""Fault injection and recording for the reliability tests: callbacks a config names by class path (the tests put
this folder on PYTHONPATH for the fits they run as separate processes), and a subprocess runner that never leaves a
process behind."""

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[2]
HELPERS_DIR = Path(__file__).resolve().parent
CLASSIFICATION_DEBUG = str(REPO_ROOT / "configs" / "classification" / "debug.yaml")
DIFFUSION_DEBUG = str(REPO_ROOT / "configs" / "diffusion" / "debug.yaml")
QUIET = "--trainer.enable_progress_bar false --trainer.enable_model_summary false".split()
# The classification debug config without its sources of randomness after the seed (MixUp/CutMix draws, affine
# jitter), so that two fits over the same batches give the same weights.
DETERMINISTIC = [
    *("--model.init_args.mixup_alpha", "0", "--model.init_args.cutmix_alpha", "0"),
    *("--data.init_args.augment", "false"),
]


class SigkillAtStep(Callback):
    """Kills its own process with SIGKILL (no clean-up of any kind) when the batch after `step` optimizer steps
    starts; with `group`, its whole process group (every DDP process at once, as when a node is lost)."""

    def __init__(self, step: int, group: bool = False) -> None:
        self.step = step
        self.group = group

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            if self.group:
                os.killpg(os.getpgid(0), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)


class PoisonBatch(Callback):
    """Fills the images of the batch at `step` with NaN (on the given ranks; None: all), so its loss is NaN."""

    def __init__(self, step: int, ranks: list[int] | None = None) -> None:
        self.step = step
        self.ranks = ranks

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step and (self.ranks is None or trainer.global_rank in self.ranks):
            batch[0].fill_(float("nan"))


class SnapshotAtStep(Callback):
    """Saves the module's state_dict to `path` when the batch after `step` optimizer steps starts."""

    def __init__(self, step: int, path: str) -> None:
        self.step = step
        self.path = path

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            torch.save({name: value.clone() for name, value in pl_module.state_dict().items()}, self.path)


class RecordSteps(Callback):
    """Appends one JSON line per training batch to `<path>.rank<r>.jsonl`: the step, this process's loss, the labels
    of its batch and a digest of torch's random state. Written and closed line by line, so it survives a SIGKILL."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        labels = batch[1] if isinstance(batch, (tuple, list)) else batch["labels"]
        row = {"step": trainer.global_step, "loss": float(outputs["loss"]), "labels": labels.tolist()}
        row["rng"] = hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()  # the state after the step
        with open(f"{self.path}.rank{trainer.global_rank}.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")


def read_steps(path: Path, rank: int = 0) -> list[dict]:
    return [json.loads(line) for line in Path(f"{path}.rank{rank}.jsonl").read_text().splitlines()]


class PixelFeatures(nn.Module):
    """A fixed random projection of the pixels: a stand-in for InceptionV3 that needs no weights file."""

    def __init__(self, pixels: int = 64, features: int = 8) -> None:
        super().__init__()
        self.projection = nn.Linear(pixels, features, bias=False)
        with torch.no_grad():
            self.projection.weight.copy_(torch.randn(features, pixels, generator=torch.Generator().manual_seed(0)))
        self.projection.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        gray = images.float().mean(dim=1)  # FID hands over 3 channels for grayscale
        return self.projection(gray.flatten(1))


class RecordFID(Callback):
    """After the FID callback (listed before it), writes `<path>.rank<r>.json` with this process's FID, its own
    number of real images, and the number torchmetrics compares when it syncs across processes."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from lightnet_vision.callbacks import FID

        if trainer.sanity_checking:
            return
        (fid,) = [callback for callback in trainer.callbacks if isinstance(callback, FID)]
        local = int(fid.metric.real_features_num_samples)
        with fid.metric.sync_context():
            synced = int(fid.metric.real_features_num_samples)
        row = {"fid": float(trainer.callback_metrics["val/fid"]), "local": local, "synced": synced}
        Path(f"{self.path}.rank{trainer.global_rank}.json").write_text(json.dumps(row))


def write_yaml(path: Path, content: dict) -> str:
    path.write_text(yaml.safe_dump(content))
    return str(path)


def callback(class_path: str, **init_args) -> dict:
    return {"class_path": class_path, "init_args": init_args}


def run_lightnet(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """`python -m lightnet_vision <args>` in its own process group, single-threaded like the test process (so its
    arithmetic matches an in-process fit), killed with all its children (DDP ranks) on timeout. Lightning's DDP
    processes do not stop on SIGTERM: SIGKILL it is."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HELPERS_DIR), os.environ.get("PYTHONPATH", "")])}
    env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "lightnet_vision", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as timed_out:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        message = f"lightnet-vision {' '.join(args)} ran past {timeout} s (a hang?):\n{output[-3000:]}"
        raise AssertionError(message) from timed_out
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    # A DDP child outliving rank 0 would keep the group alive.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return subprocess.CompletedProcess(process.args, process.returncode, output)
