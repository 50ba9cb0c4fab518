"""PredictionCSVWriter: one row per image, with the class named when the task knows the names."""

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lightnet_vision.callbacks import PredictionCSVWriter

PREDICTIONS = [
    {"paths": ["a.png", "b.png"], "index": [2, 0], "probability": [0.9, 0.51234567]},
    {"paths": ["c/d.png"], "index": [1], "probability": [1.0]},
]


def fake_trainer(log_dir: Path) -> SimpleNamespace:
    return SimpleNamespace(is_global_zero=True, log_dir=str(log_dir), default_root_dir=str(log_dir.parent))


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


@pytest.mark.parametrize(
    "class_names, expected",
    [(["ant", "cat", "zebra"], ["zebra", "ant", "cat"]), (None, ["2", "0", "1"])],
    ids=["named", "unnamed"],
)
def test_rows_name_the_predicted_class(tmp_path, class_names, expected):
    writer = PredictionCSVWriter()
    writer.write_on_epoch_end(fake_trainer(tmp_path / "run"), SimpleNamespace(class_names=class_names), PREDICTIONS, [])
    header, *rows = read_rows(tmp_path / "run" / "predictions.csv")  # the run's log directory by default
    assert header == ["path", "class", "probability"]
    assert rows == [
        ["a.png", expected[0], "0.900000"],
        ["b.png", expected[1], "0.512346"],
        ["c/d.png", expected[2], "1.000000"],
    ]


def test_explicit_path_and_other_predictions(tmp_path):
    writer = PredictionCSVWriter(path=str(tmp_path / "out" / "answers.csv"))
    writer.write_on_epoch_end(fake_trainer(tmp_path), SimpleNamespace(class_names=None), PREDICTIONS, [])
    assert len(read_rows(tmp_path / "out" / "answers.csv")) == 4
    # Not a classification prediction (a plain tensor per batch): nothing is written.
    writer = PredictionCSVWriter(path=str(tmp_path / "none.csv"))
    writer.write_on_epoch_end(fake_trainer(tmp_path), SimpleNamespace(), [torch.zeros(2, 3)], [])
    assert not (tmp_path / "none.csv").exists()
