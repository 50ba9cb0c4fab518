"""What the `lightnet-vision` command prints beyond Lightning's own: where `--help` leads for the model's and the
data's options, and a config mistake in one line instead of a usage block, a union-type dump or a traceback.

`LIGHTNET_VISION_DEBUG=1` turns the short errors off: jsonargparse's full message, and every traceback.
"""

import argparse
import difflib
import inspect
import os
import pickle
import re
import textwrap
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningArgumentParser

from lightnet_vision.checks import import_class

DEBUG_VARIABLE = "LIGHTNET_VISION_DEBUG"
PACKAGE_DIR = Path(__file__).resolve().parent

# What `--model`, `--data` and a task's `model` accept from this package (a test checks each is what it says).
TASKS = ("ImageClassification", "LatentDiffusion", "Autoencoder")
DATAMODULES = ("DigitsDataModule", "ImageFolderDataModule", "TorchvisionDataModule", "LatentCacheDataModule")
BACKBONES = ("LightNet", "LightNetDiT", "KLAutoencoder")

# Lines of a jsonargparse error that say how it searched, not what is wrong: the union it tried, the value it was
# given, and the alternatives nobody meant (no value at all, a config file of that name, another kind of subclass).
NOISE = re.compile(
    r"Does not validate against any of the Union subtypes|Subtypes: |Errors:|Given value|"
    r"Expected a <class 'NoneType'>|Expected a path but .* either not accessible or invalid|"
    r"Not a valid subclass of |Subclass types expect one of|a class path \(str\)|a dict with|a dict without"
)


def debugging() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "").lower() not in ("", "0", "false", "no")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's formatter, with the description and epilog printed as written (line breaks kept)."""


def subcommand_epilog(subcommand: str) -> str:
    """The end of `lightnet-vision <subcommand> --help`: how to list the options of the model and the data."""
    command = f"lightnet-vision {subcommand}"
    task, data, backbone = TASKS[0], DATAMODULES[0], BACKBONES[0]
    lines = [
        "The model's and the data's options depend on the classes chosen; list them with:",
        f"  {command} --model.help lightnet_vision.tasks.{task}",
        f"  {command} --data.help lightnet_vision.datamodules.{data}",
        f"  {command} --model lightnet_vision.tasks.{task} "
        f"--model.init_args.model.help lightnet_vision.models.{backbone}",
        f"  {command} --config CONFIG --print_config   (the config with every option filled in)",
    ]
    for what, package, names in [
        ("tasks (--model)", "tasks", TASKS),
        ("data (--data)", "datamodules", DATAMODULES),
        ("backbones (--model.init_args.model)", "models", BACKBONES),
    ]:
        paths = ", ".join(f"lightnet_vision.{package}.{name}" for name in names)
        lines.append(textwrap.fill(f"{what}: {paths}", width=100, subsequent_indent="  ", break_on_hyphens=False))
    lines.append("A module of yours in the working directory is named the same way: --data my_module.MyDataModule.")
    lines.append(f"{DEBUG_VARIABLE}=1 prints errors in full, with their tracebacks.")
    return "\n".join(lines)


def subcommand_description(subcommand: str) -> str:
    """The top of `lightnet-vision <subcommand> --help`."""
    return (
        f"Lightning's Trainer.{subcommand} on a task (--model) and a DataModule (--data). Their own options are not\n"
        "listed below: the end of this help says how to list them."
    )


def help_parser_kwargs(subcommands: list[str]) -> dict:
    """LightningCLI `parser_kwargs` that end `lightnet-vision --help` with `MAIN_EPILOG` and each subcommand's
    `--help` with its `subcommand_epilog` (the formatter is the main parser's: jsonargparse gives it to each)."""
    subcommand_kwargs = {
        name: {"description": subcommand_description(name), "epilog": subcommand_epilog(name)} for name in subcommands
    }
    return {"epilog": MAIN_EPILOG, "formatter_class": HelpFormatter, **subcommand_kwargs}


MAIN_EPILOG = "The options of a subcommand, and how to list the model's and the data's: lightnet-vision fit --help"


class ShortErrorParser(LightningArgumentParser):
    """The console command's parser: a config mistake is reported in two lines (the key and what is wrong with it,
    then where to read more) and exits with status 2, as argparse does. Parsers that raise instead of exiting
    (those jsonargparse builds inside, `exit_on_error=False`) and `LIGHTNET_VISION_DEBUG=1` keep jsonargparse's
    full message."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or debugging():
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        command = parser.prog.replace(" [options]", "")
        options = [option for action in parser._actions for option in action.option_strings]
        self.exit(
            2,
            f"error: {short_parse_error(message, options)}\n"
            f"({command} --help lists the options; {DEBUG_VARIABLE}=1 prints the whole error)\n",
        )


def short_parse_error(message: str, options: Sequence[str] = ()) -> str:
    """The line of a jsonargparse error that says what is wrong, after the key it is about.

    A union error nests 'Parser key "k":' and "Problem with given class_path 'c':" lines, indented, above the reason;
    the key path is rebuilt from them (`model.init_args.label_smoothing`), the class named last is kept, and an
    unknown option gets the closest known one (of `options`, or of the class's arguments) as a suggestion."""
    lines = message.splitlines()
    values = [line.strip().removeprefix("Given value: ") for line in lines if line.strip().startswith("Given value: ")]
    given = values[0] if values else None
    context: list[tuple[int, str, str]] = []  # (indent, "key" or "class", text)
    for line in lines:
        text = line.strip().removeprefix("- ").strip()
        indent = len(line) - len(line.lstrip())
        if not text or NOISE.match(text):
            continue
        while context and context[-1][0] >= indent:
            context.pop()
        if found := re.fullmatch(r"Parser key \"([^\"]+)\":\s*(.*)", text):
            context.append((indent, "key", found.group(1)))
            if found.group(2):  # the reason on the same line
                return describe(context, found.group(2), given, options)
        elif found := re.fullmatch(r"Problem with given class_path '(.+)':", text):
            context.append((indent, "class", found.group(1)))
        else:
            return describe(context, text, given, options)
    return lines[0] if lines else message


def describe(context: list[tuple[int, str, str]], reason: str, given: str | None, options: Sequence[str]) -> str:
    """`key.path: reason (in class)` from the context `short_parse_error` gathered."""
    keys, class_path = [], None
    for _, kind, text in context:
        if kind == "key":
            keys.append(text)
        else:
            keys.append("init_args")
            class_path = text
    if found := re.fullmatch(r"Option '(\w+)' is not accepted", reason):
        keys.append(found.group(1))
        reason = f"not an argument of {class_path}" if class_path else "not accepted"
        accepted = list(inspect.signature(klass).parameters) if (klass := import_class(class_path or "")) else []
        close = difflib.get_close_matches(found.group(1), accepted, n=1, cutoff=0.6)
        return f"{'.'.join(keys)}: {reason}" + (f" (did you mean {close[0]}?)" if close else "")
    if keys and keys[-1] == "init_args":
        keys.pop()
    if reason.startswith("Expected a <class") and "Got value" not in reason and given and len(given) < 60:
        reason = f"{reason}. Got value: {given}"
    if class_path and class_path not in reason:
        reason = f"{reason} (in {class_path})"
    if reason.startswith("unrecognized arguments:"):
        unknown = [word.split("=")[0] for word in reason.split()[2:] if word.startswith("--")]
        close = [match for word in unknown for match in difflib.get_close_matches(word, options, n=1, cutoff=0.8)]
        if close:
            reason = f"{reason} (did you mean {', '.join(close)}?)"
    return f"{'.'.join(keys)}: {reason}" if keys else reason


# What our own code raises for a mistake in a config or on disk; its message names the key, file or checkpoint.
USER_ERRORS = (ValueError, OSError, pickle.UnpicklingError)


def short_error(error: BaseException) -> str | None:
    """`error: <message>` for an exception raised by this package's code for a user's mistake (found in the chain
    of causes, e.g. under jsonargparse's union error around a DataModule that refused its `root`); None for any
    other exception, and under `LIGHTNET_VISION_DEBUG=1`, where the traceback is wanted."""
    if debugging():
        return None
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = traceback.extract_tb(current.__traceback__)
        raised_here = bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(PACKAGE_DIR)
        if isinstance(current, USER_ERRORS) and raised_here:
            return f"error: {current}\n({DEBUG_VARIABLE}=1 prints the traceback)"
        current = current.__cause__ or current.__context__
    return None
