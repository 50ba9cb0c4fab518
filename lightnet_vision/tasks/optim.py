"""Parameter groups for AdamW: no weight decay on biases, norms, other 1-D parameters and `no_weight_decay()`."""

from torch import nn


def param_groups_weight_decay(model: nn.Module) -> list[dict]:
    """Two groups: the first takes the optimizer's own weight decay, the second has none."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
