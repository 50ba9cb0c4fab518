"""The README keeps its word: its first config for your own image folder and its DataModule of your own train and
predict through the installed `lightnet-vision` command, run from the folder a newcomer would save them in; every
command in the README and in docs/ parses with the configs it names; every link between the pages leads somewhere.

The README marks the blocks a newcomer copies with an HTML comment, `<!-- readme-test: NAME -->`, on the line before
the code fence; the tests below find them by that name.
"""

import csv
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from classification_helpers import CLASS_LEVELS, write_image_folder

from lightnet_vision.cli import build_cli
from lightnet_vision.config_files import resolve_config

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
PAGES = [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]
COMMAND = Path(sys.executable).parent / "lightnet-vision"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
# The files the README asks the reader to save, by the name of the block that holds each.
SAVED_AS = {
    "image-folder-config": "my_config.yaml",
    "datamodule-python": "my_data.py",
    "datamodule-config": "my_data.yaml",
}
COMMAND_BLOCKS = ("image-folder-commands", "predict-commands", "datamodule-commands")
# A couple of steps of a tiny model on tiny images: what the README's commands are run with here.
TINY = [
    *("--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.max_epochs", "1"),
    *("--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"),
    *("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"),
    *("--model.init_args.model.init_args.embed_dim", "16", "--model.init_args.model.init_args.depth", "1"),
    *("--model.init_args.model.init_args.num_heads", "2"),
    *("--data.init_args.image_size", "32", "--data.init_args.batch_size", "4"),
]


def marked_blocks(text: str) -> dict[str, str]:
    """The code blocks that follow a `<!-- readme-test: NAME -->` comment, by NAME."""
    return dict(re.findall(r"<!-- readme-test: ([\w-]+) -->\n```\w*\n(.*?)\n```", text, flags=re.S))


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"^ *```bash\n(.*?)\n *```", text, flags=re.S | re.M)  # also the indented ones of a list


def commands(block: str) -> list[list[str]]:
    """The arguments of each `lightnet-vision` command in a shell block (also after `srun`, or as `-m lightnet_vision`
    under torchrun), continuation lines joined, comments dropped, the block's own `NAME="..."` variables expanded."""
    variables, found = {}, []
    for line in block.replace("\\\n", " ").splitlines():
        assignment = re.fullmatch(r"(\w+)=(.*)", line.strip())
        if assignment:
            variables[assignment[1]] = shlex.split(assignment[2])[0]
            continue
        words = shlex.split(line, comments=True)
        for index, word in enumerate(words):
            if word == "lightnet-vision" or (word == "lightnet_vision" and words[index - 1] == "-m"):
                arguments = words[index + 1 :]
                found.append([part for arg in arguments for part in expand(arg, variables)])
                break
    return found


def expand(word: str, variables: dict[str, str]) -> list[str]:
    return shlex.split(variables[word[1:]]) if word.startswith("$") and word[1:] in variables else [word]


def option(arguments: list[str], name: str) -> str:
    return arguments[arguments.index(name) + 1]


def run_command(arguments: list[str], cwd: Path) -> None:
    """Runs `lightnet-vision ARGUMENTS` in `cwd` as a user would, a tiny model on tiny images."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # modules of the working directory must come from the command itself
    done = subprocess.run([str(COMMAND), *arguments, *TINY], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"lightnet-vision {shlex.join(arguments)}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"


def write_saved_files(blocks: dict[str, str], folder: Path) -> None:
    for name, file_name in SAVED_AS.items():
        (folder / file_name).write_text(blocks[name] + "\n")


def predictions_of_newest_run(root: Path) -> list[dict[str, str]]:
    (run,) = sorted(root.glob("version_*"))  # one fit: one run, which predict wrote into too
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
    with open(run / "predictions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_readme_marks_the_blocks_a_newcomer_copies():
    blocks = marked_blocks(README.read_text())
    assert set(SAVED_AS) | set(COMMAND_BLOCKS) <= set(blocks)
    assert "class_path: my_data.MyDataModule" in blocks["datamodule-config"]
    assert "class MyDataModule(ImageDataModule)" in blocks["datamodule-python"]
    for name in COMMAND_BLOCKS:
        assert commands(blocks[name]), name


@pytest.mark.slow
def test_the_first_config_for_your_own_image_folder_trains_and_predicts(tmp_path):
    blocks = marked_blocks(README.read_text())
    write_saved_files(blocks, tmp_path)
    config = yaml.safe_load(blocks["image-folder-config"])
    write_image_folder(tmp_path / config["data"]["init_args"]["root"], splits=("train", "val"))
    fits_then_predicts = commands(blocks["image-folder-commands"]) + commands(blocks["predict-commands"])
    assert [arguments[0] for arguments in fits_then_predicts] == ["fit", "predict"]
    predict_dir = option(fits_then_predicts[1], "--data.init_args.predict_dir")
    write_image_folder(tmp_path / predict_dir, splits=("new",))
    for arguments in fits_then_predicts:
        run_command(arguments, tmp_path)
    rows = predictions_of_newest_run(tmp_path / config["trainer"]["default_root_dir"])
    assert len(rows) == len(list((tmp_path / predict_dir).rglob("*.*")))
    assert {row["class"] for row in rows} <= set(CLASS_LEVELS)


@pytest.mark.slow
def test_a_datamodule_of_your_own_beside_its_config_trains_and_predicts(tmp_path):
    blocks = marked_blocks(README.read_text())
    write_saved_files(blocks, tmp_path)
    config = yaml.safe_load(blocks["datamodule-config"])
    # The images and the CSV file the DataModule reads: `path,label` rows, paths relative to the file.
    csv_file = tmp_path / config["data"]["init_args"]["csv_file"]
    images = write_image_folder(csv_file.parent / "images", splits=("a", "b"))
    rows = [(path.relative_to(csv_file.parent).as_posix(), path.parent.name) for path in sorted(images.rglob("*.*"))]
    with open(csv_file, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    fit, predict = commands(blocks["datamodule-commands"])
    assert (fit[0], predict[0]) == ("fit", "predict")
    predict_dir = option(predict, "--data.init_args.predict_dir")
    write_image_folder(tmp_path / predict_dir, splits=("new",))
    for arguments in (fit, predict):
        run_command(arguments, tmp_path)
    predictions = predictions_of_newest_run(tmp_path / config["trainer"]["default_root_dir"])
    assert len(predictions) == len(list((tmp_path / predict_dir).rglob("*.*")))
    assert {row["class"] for row in predictions} <= set(CLASS_LEVELS)


def page_commands() -> list[tuple[str, list[str]]]:
    """`(page, arguments)` of every `lightnet-vision` subcommand in the shell blocks of the README and docs/."""
    found = []
    for page in PAGES:
        for block in shell_blocks(page.read_text()):
            for arguments in commands(block):
                if arguments and arguments[0] in SUBCOMMANDS:
                    found.append((page.relative_to(REPO_ROOT).as_posix(), arguments))
    return found


def test_the_pages_have_commands_to_check():
    pages = {page for page, _ in page_commands()}
    assert {"README.md", "docs/generation.md", "docs/scaling.md", "docs/reliability.md"} <= pages


@pytest.mark.slow
def test_every_command_on_the_pages_parses_with_the_configs_it_names(tmp_path, monkeypatch, capsys):
    # Where the README's own files are saved, as a reader would: the shipped configs are found from there too.
    write_saved_files(marked_blocks(README.read_text()), tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # what the console command does for modules in the working directory
    monkeypatch.setattr(sys, "argv", ["lightnet-vision"])
    checked = 0
    for page, arguments in page_commands():
        configs = [option(arguments[index:], "--config") for index, arg in enumerate(arguments) if arg == "--config"]
        for config in configs:
            # A clone's path exists in the clone; the README's own files are those it asks to save.
            where = REPO_ROOT if config.startswith("configs/") else tmp_path
            assert (where / config).is_file() and Path(resolve_config(config)).is_file(), (page, config)
        with pytest.raises(SystemExit) as exit_info:
            build_cli([*arguments, "--print_config"])
        printed = capsys.readouterr()
        assert exit_info.value.code in (0, None), (page, shlex.join(arguments), printed.err[-2000:])
        assert "model:" in printed.out and "data:" in printed.out, (page, arguments)
        checked += 1
    assert checked >= 10


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    prose = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # `#` lines in code blocks are no headings
    return {slug(heading) for heading in re.findall(r"^#+ (.+)$", prose, flags=re.M)}


@pytest.mark.parametrize(
    "page",
    [*PAGES, REPO_ROOT / "lightnet_vision/kernels/additive/README.md"],
    ids=lambda page: page.relative_to(REPO_ROOT).as_posix(),
)
def test_every_link_between_the_pages_leads_somewhere(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), (page.name, target)
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), (page.name, target)
