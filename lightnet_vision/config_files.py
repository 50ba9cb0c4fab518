"""The ready-made configs travel inside the package (`lightnet_vision/configs`, the repository's `configs/`), so that
`lightnet-vision fit --config classification/digits.yaml` finds one after a plain `pip install` too.

A `--config` path that exists is used as it is; otherwise a shipped config of that name is, written either from the
configs folder (`classification/digits.yaml`) or as in a clone (`configs/classification/digits.yaml`).
"""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def shipped_configs() -> list[str]:
    """The shipped configs' names, relative to the configs folder, sorted."""
    return sorted(path.relative_to(CONFIG_DIR).as_posix() for path in CONFIG_DIR.rglob("*.yaml"))


def resolve_config(path: str) -> str:
    """`path` if it exists, else the shipped config it names, else `path` unchanged (for the parser to report)."""
    given = Path(path)
    try:
        if given.exists() or given.is_absolute():
            return path
        name = Path(*given.parts[1:]) if given.parts[:1] == ("configs",) and len(given.parts) > 1 else given
        shipped = CONFIG_DIR / name
        return str(shipped) if shipped.is_file() else path
    except (OSError, ValueError):  # not a file name: a config given as a YAML string
        return path


def resolve_config_args(args: list[str]) -> list[str]:
    """Command-line arguments with the value of every `--config` / `-c` (also `--config=...`) resolved."""
    resolved = []
    for index, arg in enumerate(args):
        if index > 0 and args[index - 1] in ("--config", "-c"):
            arg = resolve_config(arg)
        elif arg.startswith("--config="):
            arg = "--config=" + resolve_config(arg.removeprefix("--config="))
        resolved.append(arg)
    return resolved
