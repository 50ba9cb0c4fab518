"""What the backward keeps: the bytes of the tensors autograd saves during a forward, and which op saves what.

Saved activations are a property of the model, not of the device, so these numbers hold on a CPU and on a GPU alike
and tests can assert them. Every storage is counted once (a view saved by three ops, or q, k and v cut out of one qkv
tensor, is one storage), parameters and buffers are left out (they are resident anyway), and so is anything saved
under a hook of its own (the inside of a `torch.utils.checkpoint` region: what checkpointing holds instead is the
region's input, which the region's caller keeps).

    python benchmarks/saved_bytes.py             # the per-block budgets of LightNet and its peers, in D-wide values

`saved_bytes(fn)` is the number `benchmarks/models.py` reports per image; `saved_by_op(output)` walks an output's
graph and names, for each saved storage, the backward nodes that hold it (the per-block tables of the benchmark page).
"""

import argparse
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

if not __package__:  # run as a script: `benchmarks.*` lives in the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _storage_key(tensor: Tensor) -> tuple[int, int] | None:
    # (address, bytes) of the memory a tensor keeps alive; None for tensors without one (meta, fake, subclasses).
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    if storage.device.type == "meta":
        return None
    return storage.data_ptr(), storage.nbytes()


def saved_bytes(fn: Callable[[], object], exclude: Iterable[Tensor] = ()) -> int:
    """Bytes of the distinct storages autograd saves for the backward while `fn()` runs (its forward).

    `exclude`: tensors whose storages are not counted, typically `model.parameters()` and `model.buffers()`.
    The result of `fn` is kept until the count is done, so that nothing saved is freed and reused unseen.
    """
    excluded = {key[0] for key in map(_storage_key, exclude) if key is not None}
    storages: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        key = _storage_key(tensor)
        if key is not None and key[0] not in excluded:
            storages[key[0]] = max(storages.get(key[0], 0), key[1])
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = fn()
    del output
    return sum(storages.values())


def model_saved_bytes(model: nn.Module, fn: Callable[[], object]) -> int:
    """`saved_bytes(fn)` without the model's parameters and buffers."""
    return saved_bytes(fn, exclude=[*model.parameters(), *model.buffers()])


@dataclass
class SavedStorage:
    """One storage the backward keeps: its bytes, the shape of a tensor saved in it, and the nodes that save it."""

    nbytes: int
    shape: tuple[int, ...]
    nodes: list[str]


def saved_by_op(output: Tensor, exclude: Iterable[Tensor] = ()) -> list[SavedStorage]:
    """The storages the graph of `output` keeps for its backward, each with the names of the nodes saving it, in
    the order a walk from the output meets them (roughly the forward's order reversed). `exclude` as in
    `saved_bytes`."""
    excluded = {key[0] for key in map(_storage_key, exclude) if key is not None}
    found: dict[int, SavedStorage] = {}
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        name = type(node).__name__
        for tensor in _node_saved_tensors(node):
            key = _storage_key(tensor)
            if key is None or key[0] in excluded:
                continue
            entry = found.setdefault(key[0], SavedStorage(key[1], tuple(tensor.shape), []))
            if name not in entry.nodes:
                entry.nodes.append(name)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return list(found.values())


def _node_saved_tensors(node) -> list[Tensor]:
    # C++ nodes expose what they saved as `_saved_<name>` attributes; Python autograd functions as `saved_tensors`.
    tensors = []
    if hasattr(node, "saved_tensors"):
        tensors += [t for t in node.saved_tensors if isinstance(t, Tensor)]
    for attribute in dir(node):
        if attribute.startswith("_saved_"):
            try:
                value = getattr(node, attribute)
            except RuntimeError:  # freed, or not a tensor the node can hand back
                continue
            values = value if isinstance(value, tuple | list) else [value]
            tensors += [t for t in values if isinstance(t, Tensor)]
    return tensors


# The pairs of the budget tables and the size each is built for (benchmarks/peers.py): DeiT-Ti's and DiT-S/2's width.
PAIRS = {
    "classifier": ("lightnet_tiny", "deit_tiny_patch16_224", 224),
    "denoiser": ("lightnet_dit_s_2", "diffusers_dit_s_2", 32),
}


def first_block_budget(family: str, name: str, size: int, batch: int = 2) -> tuple[list[SavedStorage], int, int]:
    """What the first block of a benchmark model (`benchmarks.peers.build_model`) keeps for its backward, its input
    included (a block's input is kept by that block only), on the tokens the model gives it at input side `size`.
    Returns the budget, the block's token count and its width D."""
    from benchmarks.peers import PATCH_SIZE, build_model

    torch.manual_seed(0)
    model = build_model(family, name, size).train()
    side = size // PATCH_SIZE[family]
    grid = (side, side)
    if name.startswith("lightnet"):
        block, dim = model.blocks[0], model.blocks[0].norm1.normalized_shape[0]
        extra = 1 if family == "denoiser" else 0  # the denoiser's condition token
        angles = model.pos_lrpe(grid, num_extra_tokens=extra) if extra else model.pos_lrpe(grid)
        x = torch.randn(batch, side * side + extra, dim, requires_grad=True)
        arguments = (x, torch.randn(batch, dim), angles) if family == "denoiser" else (x, angles)
        run = lambda: block(*arguments)  # noqa: E731
    elif family == "classifier":  # timm's DeiT: a class token first
        block, dim = model.blocks[0], model.embed_dim
        x = torch.randn(batch, side * side + 1, dim, requires_grad=True)
        run = lambda: block(x)  # noqa: E731
    else:  # diffusers' DiT: each block embeds the timestep and the class for its adaLN-Zero
        block = model.transformer_blocks[0]
        dim = block.norm1.linear.in_features
        x = torch.randn(batch, side * side, dim, requires_grad=True)
        timestep, labels = torch.randint(0, 1000, (batch,)), torch.randint(0, 1000, (batch,))
        run = lambda: block(x, timestep=timestep, class_labels=labels)  # noqa: E731
    budget = saved_by_op(run(), exclude=[*block.parameters(), *block.buffers()])
    return budget, x.shape[1], dim


def format_budget(name: str, budget: list[SavedStorage], dim: int, tokens: int, batch: int) -> str:
    """A table of the budget: bytes per image and `D`-wide values per token, largest first."""
    unit = batch * tokens * dim * 4  # one fp32 D-wide value per token, for the whole batch
    lines = [f"{name}: D={dim}, {tokens} tokens", f"  {'D-wide/token':>12}  {'shape':<22} saved by"]
    for entry in sorted(budget, key=lambda entry: -entry.nbytes):
        lines.append(f"  {entry.nbytes / unit:>12.2f}  {str(list(entry.shape)):<22} {', '.join(entry.nodes)}")
    total = sum(entry.nbytes for entry in budget)
    lines.append(f"  {total / unit:>12.2f}  total, {total / batch / 2**20:.2f} MiB per image")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(PAIRS), default=list(PAIRS), help="families to break down")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for family in args.only:
        *names, size = PAIRS[family]
        for name in names:
            budget, tokens, dim = first_block_budget(family, name, size)
            print(format_budget(f"{name}, first block at {size}", budget, dim, tokens, batch=2))


if __name__ == "__main__":
    main()
