"""Safe loading: a checkpoint that carries pickled code is refused on every path that reads one, without the code
running; our own checkpoints (hyperparameters, EMA and other callback states) load with weights_only=True; latent
caches hold no pickle at all."""

import json
import pickle
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from diffusion_helpers import tiny_digits

from lightnet_vision import demo
from lightnet_vision.checkpoints import UnsafeCheckpointError, load_checkpoint
from lightnet_vision.cli import build_cli
from lightnet_vision.datamodules import LatentCacheDataModule
from lightnet_vision.datamodules.latent_cache import write_latent_cache
from lightnet_vision.models import FirstStage
from lightnet_vision.tasks import ImageClassification, LatentDiffusion

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CLASSIFICATION_DEBUG = str(CONFIGS / "classification" / "debug.yaml")
DIFFUSION_DEBUG = str(CONFIGS / "diffusion" / "debug.yaml")
QUIET = "--trainer.enable_progress_bar false --trainer.enable_model_summary false".split()


class Payload:
    """Unpickling this object calls `exec`, which writes `marker`: the shape of a real attack, made harmless."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightnet-vision"])


@pytest.fixture
def booby_trapped(tmp_path) -> tuple[Path, Path]:
    """A checkpoint laid out like ours, with the payload among its hyperparameters, and the marker it would write."""
    marker, path = tmp_path / "code_ran", tmp_path / "trapped.ckpt"
    hparams = {"_class_path": "lightnet_vision.tasks.ImageClassification", "label_smoothing": Payload(marker)}
    torch.save({"state_dict": {}, "hyper_parameters": hparams, "pytorch-lightning_version": "2.6.0"}, path)
    return path, marker


def test_the_payload_runs_when_loaded_unsafely(booby_trapped):
    # The control: the file really carries code, so the tests below would catch a weights_only=False.
    path, marker = booby_trapped
    torch.load(path, weights_only=False)
    assert marker.read_text() == "ran"


def test_load_checkpoint_refuses_naming_the_file_and_the_call(booby_trapped):
    path, marker = booby_trapped
    with pytest.raises(UnsafeCheckpointError, match=rf"refusing to load {path}: it holds a reference to exec"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("subcommand", ["fit", "test"])
@pytest.mark.slow
def test_cli_ckpt_path_refuses(booby_trapped, subcommand):
    path, marker = booby_trapped
    with pytest.raises(UnsafeCheckpointError, match=f"refusing to load {path}"):
        build_cli([subcommand, "--config", CLASSIFICATION_DEBUG, *QUIET, "--ckpt_path", str(path)])
    assert not marker.exists()


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
@pytest.mark.slow
def test_cli_passes_weights_only_to_the_trainer(capsys, subcommand):
    with pytest.raises(SystemExit) as exit_:
        build_cli([subcommand, "--config", CLASSIFICATION_DEBUG, "--print_config"])
    assert exit_.value.code in (0, None)
    assert yaml.safe_load(capsys.readouterr().out)["weights_only"] is True


def test_first_stage_refuses(booby_trapped):
    path, marker = booby_trapped
    with pytest.raises(UnsafeCheckpointError, match=f"refusing to load {path}"):
        FirstStage.load(str(path))
    assert not marker.exists()


def test_demo_refuses_its_best_checkpoint_if_it_carries_code(booby_trapped, monkeypatch):
    path, marker = booby_trapped
    # The demo's fit replaced by nothing; its "best checkpoint" is the trapped file.
    trainer = SimpleNamespace(
        fit=lambda *args, **kwargs: None, checkpoint_callback=SimpleNamespace(best_model_path=path)
    )
    cli = SimpleNamespace(trainer=trainer, model=torch.nn.Identity(), datamodule=None)
    monkeypatch.setattr(demo, "build_cli", lambda *args, **kwargs: cli)
    with pytest.raises(UnsafeCheckpointError, match=f"refusing to load {path}"):
        demo.classify([])
    assert not marker.exists()


def test_load_from_checkpoint_refuses(booby_trapped):
    # Lightning passes weights_only=None, which torch >= 2.6 reads as True.
    path, marker = booby_trapped
    with pytest.raises(pickle.UnpicklingError):
        ImageClassification.load_from_checkpoint(path)
    assert not marker.exists()


@pytest.fixture(scope="module")
def ema_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of configs/diffusion/debug.yaml after 2 steps: EMA, sample-grid and checkpoint callback states."""
    root = tmp_path_factory.mktemp("ema_fit")
    limits = ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0"]
    outputs = ["--trainer.default_root_dir", str(root), "--trainer.logger", "false"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["lightnet-vision"])
        build_cli(["fit", "--config", DIFFUSION_DEBUG, *QUIET, *limits, *outputs])
    (checkpoint,) = [path for path in root.rglob("*.ckpt") if path.name != "last.ckpt"]
    return checkpoint


def test_our_checkpoints_load_with_weights_only(ema_checkpoint):
    checkpoint = torch.load(ema_checkpoint, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["_class_path"] == "lightnet_vision.tasks.LatentDiffusion"
    assert any(name.startswith("EMAWeightAveraging") for name in checkpoint["callbacks"])
    assert checkpoint["averaging_state"] and checkpoint["optimizer_states"]
    task = LatentDiffusion.load_from_checkpoint(ema_checkpoint, weights_only=True)
    for name, value in task.state_dict().items():
        torch.testing.assert_close(value, checkpoint["state_dict"][name], rtol=0, atol=0)


@pytest.mark.slow
def test_cli_reads_every_checkpoint_with_weights_only(ema_checkpoint, tmp_path, monkeypatch):
    calls = []
    torch_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return torch_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    outputs = ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"]
    limits = ["--trainer.limit_val_batches", "1"]
    build_cli(["validate", "--config", DIFFUSION_DEBUG, *QUIET, *outputs, *limits, "--ckpt_path", str(ema_checkpoint)])
    # The CLI reads the hyperparameters, checks the classes, then the Trainer restores the weights.
    assert len(calls) >= 3 and all(weights_only is True for weights_only in calls)


@pytest.fixture
def latent_cache(tmp_path) -> Path:
    source = tiny_digits(val_fraction=0.02, test_fraction=0.9)
    write_latent_cache(source, FirstStage.load("pixel"), tmp_path / "cache", shard_size=64, batch_size=32)
    return tmp_path / "cache"


def test_latent_caches_hold_no_pickle(latent_cache, monkeypatch):
    index = json.loads((latent_cache / "index.json").read_text())
    shards = [latent_cache / shard["file"] for split in index["splits"].values() for shard in split]
    for shard in shards:
        # safetensors: an 8-byte little-endian header length, a JSON header, then raw tensor bytes.
        raw = shard.read_bytes()
        (header_size,) = struct.unpack("<Q", raw[:8])
        assert set(json.loads(raw[8 : 8 + header_size])) >= {"latents", "labels"}

    def no_unpickling(*args, **kwargs):
        raise AssertionError("the latent cache was read through pickle")

    for module, name in [(torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")]:
        monkeypatch.setattr(module, name, no_unpickling)
    data = LatentCacheDataModule(str(latent_cache))
    data.setup("fit")
    items = [data.train_set[index] for index in range(len(data.train_set))]
    assert len(items) == sum(shard["size"] for shard in index["splits"]["train"])
    assert items[0]["latents"].shape == (1, 8, 8)


def test_a_pickle_in_place_of_a_shard_is_refused(latent_cache, tmp_path):
    marker = tmp_path / "code_ran"
    shard = latent_cache / "train-00000.safetensors"  # holds item 0
    torch.save({"latents": Payload(marker)}, shard)
    data = LatentCacheDataModule(str(latent_cache))
    data.setup("fit")
    with pytest.raises(Exception, match="(?i)header|safetensor"):
        data.train_set[0]
    assert not marker.exists()
