"""The packages' names are imported on first use: the command starts without diffusers, albumentations or
scikit-learn, and every public import path still gives the object its module defines."""

import importlib
import subprocess
import sys

import pytest
from lightning.pytorch import LightningDataModule, LightningModule

PACKAGES = [
    "lightnet_vision.callbacks",
    "lightnet_vision.datamodules",
    "lightnet_vision.diffusion",
    "lightnet_vision.models",
    "lightnet_vision.tasks",
]
HEAVY = ("diffusers", "albumentations", "sklearn")


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_is_the_object_of_its_module(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        value = getattr(module, name)
        assert value.__name__ == name
        assert value.__module__.startswith(f"{package}.")
        assert getattr(importlib.import_module(value.__module__), name) is value
        assert name in dir(module)


def test_an_unknown_name_is_an_attribute_error():
    import lightnet_vision.tasks

    with pytest.raises(AttributeError, match="has no attribute 'NoSuchTask'"):
        lightnet_vision.tasks.NoSuchTask  # noqa: B018


def test_from_imports_and_the_registry_work():
    from lightnet_vision.datamodules import DigitsDataModule
    from lightnet_vision.models import FirstStage, LightNet, create_model, list_models
    from lightnet_vision.tasks import ImageClassification

    assert issubclass(ImageClassification, LightningModule) and issubclass(DigitsDataModule, LightningDataModule)
    assert FirstStage.load("pixel").downsample_factor == 1
    # The presets are registered by importing the package, not by the first look-up of a lazy name.
    assert "lightnet_tiny" in list_models() and isinstance(create_model("lightnet_tiny", num_classes=3), LightNet)


@pytest.mark.slow
def test_the_cli_imports_none_of_the_heavy_libraries():
    # A fresh interpreter: this one has imported them already.
    code = f"import sys, lightnet_vision.cli; print([name for name in {HEAVY!r} if name in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_class_path_still_imports_its_module():
    # What jsonargparse does with `class_path: lightnet_vision.tasks.LatentDiffusion`, in a fresh interpreter.
    code = (
        "import sys; from jsonargparse import ArgumentParser; from lightning.pytorch import LightningModule\n"
        "parser = ArgumentParser(); parser.add_subclass_arguments(LightningModule, 'model')\n"
        "config = parser.parse_args(['--model', 'lightnet_vision.tasks.LatentDiffusion', "
        "'--model.model', 'lightnet_vision.models.LightNetDiT'])\n"
        "print(config.model.class_path, 'diffusers' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.split() == ["lightnet_vision.tasks.LatentDiffusion", "True"]
