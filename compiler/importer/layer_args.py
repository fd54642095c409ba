"""Reading a layer's constructor arguments off the instance, as YAML can write them."""

from __future__ import annotations

import math

from ..registry import REGISTRY
from .common import ImportFailure

# ---- module arguments ---------------------------------------------------------------------------
_ATTR = {  # constructor argument -> how to read it where the attribute has another name
    ("MultiheadAttention", "bias"): lambda m: m.in_proj_bias is not None,
    ("MultiheadAttention", "add_bias_kv"): lambda m: m.bias_k is not None,
    ("FrozenBatchNorm2d", "num_features"): lambda m: m.weight.shape[0],
    ("MultiheadAttention", "kdim"): lambda m: None if m.kdim == m.embed_dim else m.kdim,
    ("MultiheadAttention", "vdim"): lambda m: None if m.vdim == m.embed_dim else m.vdim,
}


def _activation_name(m):
    """A transformer layer's activation as its constructor takes it: "relu" or "gelu"."""
    import torch.nn.functional as F

    return {F.relu: "relu", F.gelu: "gelu"}.get(m.activation, m.activation)


for _layer in ("ShiftedWindowAttention", "ShiftedWindowAttentionV2", "ShiftedWindowAttention3d"):
    _ATTR.update({
        (_layer, "dim"): lambda m: m.qkv.in_features,
        (_layer, "qkv_bias"): lambda m: m.qkv.bias is not None,
        (_layer, "proj_bias"): lambda m: m.proj.bias is not None,
    })  # fmt: skip

for _layer in ("TransformerEncoderLayer", "TransformerDecoderLayer"):  # kept in their sublayers
    _ATTR.update({
        (_layer, "d_model"): lambda m: m.self_attn.embed_dim,
        (_layer, "nhead"): lambda m: m.self_attn.num_heads,
        (_layer, "dim_feedforward"): lambda m: m.linear1.out_features,
        (_layer, "dropout"): lambda m: m.dropout.p,
        (_layer, "activation"): _activation_name,
        (_layer, "layer_norm_eps"): lambda m: m.norm1.eps,
        (_layer, "batch_first"): lambda m: m.self_attn.batch_first,
        (_layer, "bias"): lambda m: m.linear1.bias is not None,
    })  # fmt: skip


def _module_args(m, op: str, shapes: list, path: str) -> tuple[dict, frozenset]:
    """The constructor arguments of a layer, read off the instance, and which of them
    the compiler would infer from the input shapes."""
    import torch

    opdef = REGISTRY.get(op)
    args = {}
    for key, argdef in opdef.args.items():
        if key.startswith("_"):
            continue
        reader = _ATTR.get((op, key))
        if (
            key == "stride"
            and argdef.default is None
            and getattr(m, "stride", 0) == getattr(m, "kernel_size", 1)
        ):
            value = None  # pools: stride defaults to kernel_size
        elif reader is not None:
            value = reader(m)
        elif hasattr(m, key):
            value = getattr(m, key)
            if (
                isinstance(value, torch.Tensor)
                or value is None
                and argdef.schema.get("type") == "boolean"
            ):
                value = value is not None  # bias=True <-> a bias parameter
        else:
            if argdef.required or (argdef.inferred and argdef.default is None):
                raise ImportFailure(
                    f"cannot read argument '{key}' of '{path}' ({op}): the layer does not keep it"
                )
            continue
        value = _plain(value, argdef.schema)
        if value is _NOT_PLAIN:
            if reader is None and argdef.default is None and not argdef.required:
                continue  # a callable or module argument left at its default (checked later)
            raise ImportFailure(f"argument '{key}' of '{path}' ({op}) cannot be written in YAML")
        args[key] = value
    droppable = set()
    if shapes and all(s is not None for s in shapes):
        for key, rule in opdef.infer.items():
            try:
                inferred = rule([tuple(s) for s in shapes])
            except (IndexError, TypeError):
                continue
            if key in args and _plain(inferred, opdef.args[key].schema) == args[key]:
                droppable.add(key)
    return args, frozenset(droppable)


_NOT_PLAIN = object()


def _plain(value, schema: dict | None = None):
    """A Python value as YAML writes it: tuples as lists, (3, 3) as 3 where an int is
    accepted; _NOT_PLAIN for what YAML cannot hold."""
    import torch

    if isinstance(value, torch.Size):
        value = tuple(value)
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _NOT_PLAIN
    if isinstance(value, (tuple, list)):
        items = [_plain(v) for v in value]
        if any(v is _NOT_PLAIN for v in items):
            return _NOT_PLAIN
        if items and all(v == items[0] and type(v) is int for v in items) and _takes_int(schema):
            return items[0]
        return items
    return _NOT_PLAIN


def _takes_int(schema: dict | None) -> bool:
    if not schema:
        return False
    if schema.get("type") == "integer":
        return True
    return any(_takes_int(s) for s in schema.get("anyOf", ()))
