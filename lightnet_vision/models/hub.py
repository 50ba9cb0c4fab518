"""Hugging Face Hub checkpoints of the backbones: `save_pretrained`, `from_pretrained` and `push_to_hub`.

Built on huggingface_hub's `PyTorchModelHubMixin`, which gives the three methods, the download and the model card;
this module decides what a checkpoint holds. A saved folder (or Hub repository) has

    model.safetensors   the state dict
    config.json         timm's layout: architecture, num_classes, num_features, global_pool, pretrained_cfg,
                        model_args (every constructor argument, sizes resolved, the head as it is now)
    README.md           a model card generated from the arguments (kept if the folder already has one)

so that the same folder loads with `LightNet.from_pretrained(path_or_id)` and, once
`lightnet_vision.models.timm_models.register()` has run, with timm's `create_model("local-dir:<path>")` or
`create_model("hf-hub:<id>")`. Loading is strict: a checkpoint that does not fit the model raises, except that a
classifier given another `num_classes` than the checkpoint's starts with a fresh head (as timm does).
"""

import json
import os
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from safetensors.torch import load_file, save_model

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# Where a pretrained_cfg says its weights came from: true of one copy, not of the saved folder.
_SOURCE_KEYS = ("file", "hf_hub_id", "url", "state_dict", "source", "tag")

MODEL_CARD = """---
{{ card_data }}
---

# {{ architecture }}

A `{{ class_name }}` of lightnet-vision: {{ description }} (LightNet: additive linear attention with MD-TPE and
MD-LRPE, [arXiv 2405.21022](https://arxiv.org/abs/2405.21022)).

## Use

```python
from {{ module }} import {{ class_name }}

model = {{ class_name }}.from_pretrained("{{ repo_id }}")
```
{% if timm %}
With timm, once lightnet-vision has registered its models:

```python
import timm
from lightnet_vision.models import timm_models

timm_models.register()
model = timm.create_model("hf-hub:{{ repo_id }}", pretrained=True)
config = timm.data.resolve_data_config({}, model=model)  # input size, mean and std of the training data
```
{% endif %}
## Arguments

```json
{{ model_args }}
```
"""


class HubMixin(
    PyTorchModelHubMixin,
    library_name="lightnet-vision",
    license="apache-2.0",
    paper_url="https://arxiv.org/abs/2405.21022",
    model_card_template=MODEL_CARD,
    tags=["lightnet"],
):
    """`save_pretrained` / `from_pretrained` / `push_to_hub` for a backbone with `model_args()` (its constructor
    arguments as they are now) and `architecture` (its preset, or the name timm knows it by)."""

    #: One line on what the model does, for the model card.
    hub_description = "a LightNet model"

    def hub_config(self) -> dict[str, Any]:
        """config.json: the constructor arguments and, for a classifier, timm's fields."""
        config: dict[str, Any] = {"architecture": self.architecture, "model_args": self.model_args()}
        cfg = getattr(self, "pretrained_cfg", None)
        if cfg is not None:
            config["num_classes"] = self.num_classes
            config["num_features"] = self.num_features
            config["global_pool"] = self.global_pool
            config["pretrained_cfg"] = {
                key: value for key, value in cfg.items() if key not in _SOURCE_KEYS and value is not None
            }
        return config

    def _save_pretrained(self, save_directory: Path) -> None:
        config = json.dumps(self.hub_config(), indent=2, sort_keys=True)
        (save_directory / CONFIG_NAME).write_text(config + "\n", encoding="utf-8")
        save_model(self, str(save_directory / WEIGHTS_NAME))

    def generate_model_card(self, *args, **kwargs):
        kwargs.setdefault("repo_id", "<user>/<repository>")
        return super().generate_model_card(
            *args,
            architecture=self.architecture,
            class_name=type(self).__name__,
            module=type(self).__module__.rpartition(".")[0],  # the public package, lightnet_vision.models
            description=self.hub_description,
            timm=getattr(self, "pretrained_cfg", None) is not None,
            model_args=json.dumps(self.model_args(), indent=2, sort_keys=True),
            **kwargs,
        )

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        config: dict[str, Any] | None = None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs,
    ):
        if config is None or "model_args" not in config:
            raise ValueError(f"{model_id} has no config.json with model_args: it was not saved by save_pretrained")
        # The mixin also passes the config's top-level keys that are constructor arguments (num_classes,
        # global_pool); they equal model_args unless the caller gave their own.
        model = cls(**{**config["model_args"], **model_kwargs})
        if os.path.isdir(model_id):
            weights = os.path.join(model_id, WEIGHTS_NAME)
        else:
            weights = hf_hub_download(
                model_id,
                WEIGHTS_NAME,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
            )
        load_weights(model, load_file(weights, device=str(map_location)), strict=strict)
        if config.get("pretrained_cfg") and getattr(model, "pretrained_cfg", None) is not None:
            source = {"file": model_id} if os.path.isdir(model_id) else {"hf_hub_id": model_id}
            model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, **config["pretrained_cfg"], **source}
        return model.eval()


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Loads `state_dict` into `model`. A classifier head of another size than the checkpoint's (fine-tuning to new
    classes) is left as initialised; anything else that does not fit raises when `strict`."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    head = cfg.get("classifier")
    own = model.state_dict()
    skipped = []
    if head:
        for key in [key for key in state_dict if key.startswith(f"{head}.")]:
            if key not in own or own[key].shape != state_dict[key].shape:
                skipped.append(key)
                del state_dict[key]
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [key for key in missing if not (skipped and key.startswith(f"{head}."))]
    if strict and (missing or unexpected):
        raise RuntimeError(
            f"the checkpoint does not fit {type(model).__name__}: missing {missing or 'nothing'}, "
            f"unexpected {unexpected or 'nothing'}"
        )


def load_pretrained(model: torch.nn.Module, pretrained_cfg: dict[str, Any]) -> None:
    """Loads the weights a pretrained_cfg names (timm's keys): `file`, a folder written by `save_pretrained`, a
    `.safetensors` file, a state dict saved with `torch.save` or a task checkpoint (`.ckpt`: its backbone); or
    `hf_hub_id`, a Hub repository written by `save_pretrained` (or such a folder)."""
    source = pretrained_cfg.get("file") or pretrained_cfg.get("hf_hub_id")
    if not source:
        name = pretrained_cfg.get("architecture") or type(model).__name__
        raise RuntimeError(
            f"no pretrained weights of {name} are published yet; pass your own with "
            "pretrained_cfg_overlay={'file': <folder from save_pretrained, .safetensors, .pth or task .ckpt>} or "
            "{'hf_hub_id': <Hub repository>}, or use pretrained=False"
        )
    path = Path(source)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    elif not path.exists():
        path = Path(hf_hub_download(str(source), WEIGHTS_NAME))
    if path.suffix == ".safetensors":
        state_dict = load_file(str(path))
    else:
        from lightnet_vision.checkpoints import load_checkpoint

        state_dict = load_checkpoint(path)
        if "state_dict" in state_dict:  # a Lightning checkpoint of a task: the backbone is its `model`
            state_dict = {k.removeprefix("model."): v for k, v in state_dict["state_dict"].items() if k[:6] == "model."}
    load_weights(model, state_dict)
