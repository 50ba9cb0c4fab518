"""Divergence: a NaN loss stops the fit with an error naming the step, after saving the state before the bad batch,
or (action: skip) the batch is dropped without touching the weights."""

import math
from pathlib import Path

import pytest
import torch
from diffusion_helpers import run_cli
from reliability_helpers import CLASSIFICATION_DEBUG, DETERMINISTIC, QUIET, callback, write_yaml

from lightnet_vision.callbacks import NonFiniteLoss, NonFiniteLossError

pytestmark = pytest.mark.slow

STEPS, BAD_STEP = 6, 3


def fit_args(root: Path, *callbacks: dict) -> list[str]:
    """The classification debug config for 6 batches, with the batch after step 3 filled with NaN."""
    callbacks = [*callbacks, callback("reliability_helpers.PoisonBatch", step=BAD_STEP)]
    trainer = {"max_epochs": 1, "limit_train_batches": STEPS, "limit_val_batches": 1, "logger": False}
    trainer |= {"default_root_dir": str(root), "callbacks": callbacks}
    overrides = write_yaml(root / "overrides.yaml", {"trainer": trainer})
    return ["fit", "--config", CLASSIFICATION_DEBUG, "--config", overrides, *QUIET, *DETERMINISTIC]


def snapshot(step: int, path: Path) -> dict:
    return callback("reliability_helpers.SnapshotAtStep", step=step, path=str(path))


def assert_same_weights(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys()
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=0, atol=0, msg=name)


def test_stop_saves_the_state_before_the_bad_batch_and_names_the_step(tmp_path):
    # No NonFiniteLoss in the config: the CLI's default one stops.
    with pytest.raises(NonFiniteLossError, match=rf"non-finite training loss \(nan\) at global step {BAD_STEP} "):
        run_cli(tmp_path, fit_args(tmp_path, snapshot(BAD_STEP, tmp_path / "before.pt")))
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # The weights are those before the bad batch; the optimizer's moments are finite and counted 3 updates.
    assert_same_weights(torch.load(tmp_path / "before.pt", weights_only=True), checkpoint["state_dict"])
    (state,) = [value for key, value in checkpoint["callbacks"].items() if key.startswith("NonFiniteLoss")]
    moments = checkpoint["optimizer_states"][0]["state"].values()
    assert all(torch.isfinite(moment["exp_avg"]).all() and moment["step"].item() == BAD_STEP for moment in moments)
    assert checkpoint["global_step"] == BAD_STEP + 1  # the optimizer step ran, without gradients

    # `--ckpt_path last` resumes after the bad batch and finishes the epoch with finite weights.
    resumed = run_cli(
        tmp_path, [*fit_args(tmp_path), "--ckpt_path", "last", "--model.init_args.optimizer.init_args.lr", "1e-4"]
    )
    assert resumed.trainer.global_step == STEPS
    assert all(torch.isfinite(value).all() for value in resumed.model.state_dict().values())
    assert state == {"skipped_steps": []}


def test_skip_drops_the_bad_batch_and_trains_on(tmp_path):
    action = callback("lightnet_vision.callbacks.NonFiniteLoss", action="skip")
    before, after = snapshot(BAD_STEP, tmp_path / "before.pt"), snapshot(BAD_STEP + 1, tmp_path / "after.pt")
    with pytest.warns(UserWarning, match=rf"non-finite training loss \(nan\) at global step {BAD_STEP}: the batch"):
        cli = run_cli(tmp_path, fit_args(tmp_path, action, before, after))
    assert cli.trainer.global_step == STEPS
    (guard,) = [item for item in cli.trainer.callbacks if isinstance(item, NonFiniteLoss)]  # the config's, alone
    assert guard.action == "skip" and guard.skipped_steps == [BAD_STEP]
    # The skipped batch changed nothing; the ones after it trained as usual.
    assert_same_weights(torch.load(tmp_path / "before.pt"), torch.load(tmp_path / "after.pt"))
    final = cli.model.state_dict()
    assert all(torch.isfinite(value).all() for value in final.values())
    assert any(not torch.equal(final[name], value) for name, value in torch.load(tmp_path / "after.pt").items())
    assert math.isfinite(cli.trainer.callback_metrics["val/loss"].item())


def test_action_is_checked():
    with pytest.raises(ValueError, match="'stop' or 'skip'"):
        NonFiniteLoss(action="ignore")
