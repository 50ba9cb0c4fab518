"""benchmarks/demo_selection.py: the config variant it fits, the checkpoint each rule picks, its table and CSV.

The trained numbers themselves are not checked (docs/results.md records them); the demo's config is checked to use
the rule those numbers chose.
"""

import csv
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from benchmarks import demo_selection

CHECKPOINT = "lightning.pytorch.callbacks.ModelCheckpoint"


def monitors(config: dict) -> list[str | None]:
    return [
        c.get("init_args", {}).get("monitor") for c in config["trainer"]["callbacks"] if c["class_path"] == CHECKPOINT
    ]


def test_the_demo_keeps_the_checkpoint_with_the_lowest_validation_loss():
    # The 180-digit validation split saturates at 100% top-1, so the demo selects on validation loss instead.
    config = yaml.safe_load(demo_selection.DEMO_CONFIG.read_text())
    chosen = [c["init_args"] for c in config["trainer"]["callbacks"] if c["init_args"].get("monitor")]
    assert [(args["monitor"], args["mode"]) for args in chosen] == [("val/loss", "min")]


@pytest.mark.parametrize("monitor", ["val/acc1", "val/loss"])
def test_the_variant_monitors_both_metrics_once_and_keeps_the_rest(tmp_path: Path, monitor: str):
    base = yaml.safe_load(demo_selection.DEMO_CONFIG.read_text())
    for callback in base["trainer"]["callbacks"]:
        if callback["init_args"].get("monitor"):
            callback["init_args"].update(monitor=monitor, mode="max" if monitor == "val/acc1" else "min")
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(base))
    variant = demo_selection.selection_config(path, tmp_path / "runs")
    assert sorted(m for m in monitors(variant) if m) == ["val/acc1", "val/loss"]
    assert variant["trainer"]["default_root_dir"] == str(tmp_path / "runs")
    assert len(variant["trainer"]["callbacks"]) == len(base["trainer"]["callbacks"]) + 1
    assert variant["model"] == base["model"] and variant["data"] == base["data"]


def test_each_rule_reads_its_own_callback(tmp_path: Path):
    by_accuracy = ModelCheckpoint(dirpath=tmp_path, monitor="val/acc1", mode="max")
    by_loss = ModelCheckpoint(dirpath=tmp_path, monitor="val/loss", mode="min")
    last = ModelCheckpoint(dirpath=tmp_path, save_top_k=0, save_last=True)
    by_accuracy.best_model_path, by_loss.best_model_path, last.last_model_path = "acc.ckpt", "loss.ckpt", "last.ckpt"
    picked = demo_selection.rule_checkpoints([object(), by_loss, last, by_accuracy])
    assert picked == {"best val/acc1": "acc.ckpt", "best val/loss": "loss.ckpt", "last (EMA)": "last.ckpt"}
    with pytest.raises(RuntimeError, match="best val/loss"):
        demo_selection.rule_checkpoints([by_accuracy, last])


def test_table_gives_each_rule_its_seeds_min_and_mean():
    rows = [
        {"rule": rule, "seed": seed, "test_acc1": accuracy, "epochs_trained": epochs}
        for rule, scores in {"best val/acc1": (0.97, 0.99, 1.0), "last (EMA)": (0.98, 0.98, 0.99)}.items()
        for seed, accuracy, epochs in zip((0, 1, 2), scores, (32, 60, 41), strict=True)
    ]
    table = demo_selection.markdown_table(rows, [0, 1, 2]).splitlines()
    assert table[0] == "| rule | seed 0 | seed 1 | seed 2 | min | mean |"
    assert table[2] == "| best val/acc1 | 97.00% (32 ep) | 99.00% (60 ep) | 100.00% (41 ep) | 97.00% | 98.67% |"
    assert table[3] == "| last (EMA) | 98.00% (32 ep) | 98.00% (60 ep) | 99.00% (41 ep) | 98.00% | 98.33% |"
    assert len(table) == 4  # no row for a rule without results


@pytest.mark.slow
def test_a_short_run_writes_one_row_per_rule_and_seed_under_its_header(tmp_path: Path):
    out = tmp_path / "selection.csv"
    args = ["--seeds", "0", "1", "--max_epochs", "1", "--limit_batches", "1", "--out", str(out), "--runs"]
    demo_selection.main([*args, str(tmp_path / "runs")])
    lines = out.read_text().splitlines()
    header = [line for line in lines if line.startswith("#")]
    assert [line.split(":")[0] for line in header[:3]] == ["# date", "# command", "# machine"]
    assert "--max_epochs 1" in header[1]
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert sorted((row["rule"], row["seed"]) for row in rows) == sorted(
        (rule, seed) for rule in demo_selection.RULES for seed in ("0", "1")
    )
    for row in rows:
        assert 0.0 <= float(row["test_acc1"]) <= 1.0
        assert Path(demo_selection.REPO_ROOT, row["checkpoint"]).is_file()
