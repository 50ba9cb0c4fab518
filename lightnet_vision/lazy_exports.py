"""Names a package exports, imported from their modules on first use (PEP 562).

`import lightnet_vision.cli`, and with it `lightnet-vision --help`, would otherwise load diffusers, albumentations
and scikit-learn through the packages' `__init__` files, about two seconds on top of torch and Lightning. A
config's `class_path: lightnet_vision.tasks.ImageClassification` and `from lightnet_vision.models import FirstStage`
still work: both look the name up on the package, which imports its module then.
"""

import sys
from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(package: str, modules: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level `__getattr__` and `__dir__` of `package` for the names in `modules` (name: submodule).

    Use in a package's `__init__.py`:
    `__getattr__, __dir__ = lazy_exports(__name__, {"FirstStage": "first_stage"})`.
    """
    namespace = vars(sys.modules[package])

    def __getattr__(name: str) -> Any:
        if name not in modules:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f"{package}.{modules[name]}"), name)
        namespace[name] = value  # later look-ups find it without this function
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *modules})

    return __getattr__, __dir__
