import ast
import re
import warnings
from pathlib import Path

import lightning
import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.utilities.combined_loader import CombinedLoader

from lightnet_vision import lightning_compat
from lightnet_vision.lightning_compat import (
    LIGHTNING_PRIVATES,
    LIGHTNING_TESTED,
    LightningVersionWarning,
    check_lightning,
    lightning_has,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("private", LIGHTNING_PRIVATES)
def test_installed_lightning_has_the_private(private):
    assert lightning_has(private), f"Lightning {lightning.__version__} has no {private}: update lightning_compat.py"


@pytest.mark.parametrize("name", ["_combined_loader", "_combined_loader_states_to_load", "_data_fetcher"])
def test_fit_loop_instance_has_the_private(name):
    # `lightning_has` finds an instance attribute by name in the class's code; here, on a real fit loop.
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    assert hasattr(trainer.fit_loop, name), f"Lightning {lightning.__version__}'s fit loop has no {name}"


@pytest.mark.parametrize(
    "private",
    [
        "lightning.pytorch.loops.fit_loop:_FitLoop._no_such_attribute",
        "lightning.pytorch.cli:LightningCLI._no_such_method",
        "lightning.pytorch.no_such_module:thing",
        "lightning.pytorch.cli:NoSuchClass._parse_ckpt_path",
    ],
)
def test_lightning_has_is_false_for_a_missing_private(private):
    assert not lightning_has(private)


def test_a_tested_version_passes_silently():
    assert ".".join(lightning.__version__.split(".")[:2]) in LIGHTNING_TESTED
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_lightning()


@pytest.mark.parametrize("version", ["2.5.6", "2.7.0", "2.7.0rc1", "3.0.0"])
def test_an_untested_version_warns_naming_it(monkeypatch, version):
    monkeypatch.setattr(lightning, "__version__", version)
    with pytest.warns(LightningVersionWarning, match=re.escape(f"not {version}")):
        check_lightning()


def test_a_missing_private_fails_naming_it(monkeypatch):
    monkeypatch.delattr(CombinedLoader, "_load_state_dicts")
    with pytest.raises(ImportError, match=re.escape("CombinedLoader._load_state_dicts")):
        check_lightning()


def test_pyproject_bounds_lightning_below_the_first_untested_minor():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (requirement,) = [dep for dep in project["dependencies"] if re.match(r"lightning\b", dep)]
    lower, upper = re.fullmatch(r"lightning>=([\d.]+),<([\d.]+)", requirement.replace(" ", "")).groups()
    tested = sorted(tuple(map(int, version.split("."))) for version in LIGHTNING_TESTED)
    assert tuple(map(int, lower.split("."))) == tested[0]
    major, minor = tested[-1]
    assert upper == f"{major}.{minor + 1}"


def _lightning_privates_in(tree: ast.AST) -> set[str]:
    # Imports of `_`-prefixed names (or modules) of Lightning, and every name this module lists, however reached.
    listed = {re.split(r"[:.]", private)[-1] for private in LIGHTNING_PRIVATES} | {"_FitLoop"}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and re.match(
            r"(lightning|pytorch_lightning|lightning_fabric)\b", node.module or ""
        ):
            found |= {f"{node.module}.{alias.name}" for alias in node.names if alias.name.startswith("_")}
            found |= {node.module} if any(part.startswith("_") for part in node.module.split(".")) else set()
        elif isinstance(node, ast.Attribute) and node.attr in listed:
            found.add(node.attr)
        elif isinstance(node, ast.Name) and node.id in listed:
            found.add(node.id)
    return found


def test_lightning_privates_appear_only_in_the_compat_module():
    exempt = {Path(lightning_compat.__file__).resolve(), Path(__file__).resolve()}
    files = [path for folder in ("lightnet_vision", "benchmarks", "tests") for path in (ROOT / folder).rglob("*.py")]
    offenders = {
        path.relative_to(ROOT).as_posix(): sorted(found)
        for path in files
        if path.resolve() not in exempt and (found := _lightning_privates_in(ast.parse(path.read_text())))
    }
    assert not offenders, f"Lightning privates outside lightnet_vision/lightning_compat.py: {offenders}"


def test_the_scan_finds_a_private_import_and_attribute():
    source = "from lightning.fabric.utilities.types import _PATH\nloop._combined_loader._load_state_dicts(s)\n"
    assert _lightning_privates_in(ast.parse(source)) == {
        "lightning.fabric.utilities.types._PATH",
        "_combined_loader",
        "_load_state_dicts",
    }
