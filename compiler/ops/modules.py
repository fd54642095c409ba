"""nn.Module ops, read from the classes themselves.

Arguments come from `__init__`'s signature (names, defaults, type annotations turned
into JSON Schema), argument docs from the class docstring's "Args:" section, and the
number of tensor inputs from `forward`'s signature. Shape-derived constructor arguments
are named once, below, by their PyTorch names — not per op.
"""

from __future__ import annotations

import collections.abc
import inspect
import re
import types
import typing
from typing import Any

from ..registry import ArgDef, OpDef

__all__ = ["module_opdef", "register_torch_nn", "register_torchvision_ops", "annotation_schema"]

# Constructor arguments derived from the first (or second) input's shape, by name.
SHAPE_DERIVED = {
    "in_channels": lambda ins: ins[0][1],
    "in_features": lambda ins: ins[0][-1],
    "num_features": lambda ins: ins[0][1],
    "num_channels": lambda ins: ins[0][1],
    "embed_dim": lambda ins: ins[0][-1],
    "input_size": lambda ins: ins[0][-1],
    "d_model": lambda ins: ins[0][-1],
    "in1_features": lambda ins: ins[0][-1],
    "in2_features": lambda ins: ins[1][-1],
    "normalized_shape": lambda ins: [ins[0][-1]],
}

# Where an op reads an argument from another dim than its name usually means.
SHAPE_DERIVED_BY_OP = {
    "MLP": {"in_channels": lambda ins: ins[0][-1]},  # a stack of Linear
    "LayerNorm2d": {"normalized_shape": lambda ins: [ins[0][1]]},  # over the channels of [N, C, H, W]
    "SqueezeExcitation": {"input_channels": lambda ins: ins[0][1]},
    **dict.fromkeys(("ShiftedWindowAttention", "ShiftedWindowAttentionV2", "ShiftedWindowAttention3d",
                     "PatchMerging", "PatchMergingV2"), {"dim": lambda ins: ins[0][-1]}),  # channels last
}

# How to fix the usual shape error of a module, shown after torch's own message.
SHAPE_HINTS = {
    "Linear": "Linear works on the last dim; add a flatten node before it?",
    "Conv1d": "Conv1d expects [N, C, L]",
    "Conv2d": "Conv2d expects [N, C, H, W]; a flatten or reshape before it?",
    "Conv3d": "Conv3d expects [N, C, D, H, W]",
    "Embedding": "Embedding expects integer ids: declare the input with dtype: int64",
}

# Element-wise modules without weights: their output is shaped like their input, so
# the shapes stage need not run them (running them on meta tensors is costly).
ELEMENTWISE = {
    "ReLU", "ReLU6", "LeakyReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Sigmoid",
    "Tanh", "Hardtanh", "Hardswish", "Hardsigmoid", "Softplus", "Softsign", "Tanhshrink",
    "Softshrink", "Hardshrink", "LogSigmoid", "Threshold", "Dropout", "Dropout1d", "Dropout2d",
    "Dropout3d", "AlphaDropout", "FeatureAlphaDropout", "Identity",
}  # fmt: skip

# Shape rules for the commonest layers, run instead of the layer on meta tensors. Their
# meta kernels are Python decompositions: slower per node (the ResNet-50 spec compiles in
# 0.24 s with these rules, 0.34 s without; torchvision builds it in 0.25 s), and the first
# one loads TorchDynamo (about 1 s of `yamlnet validate`, which should cost little more
# than `import torch`). See also ops/tensors.py's rule for add, sub and mul.
BATCH_NORM_RANKS = {"BatchNorm1d": (2, 3), "BatchNorm2d": (4,), "BatchNorm3d": (5,)}


def _batch_norm_rule(module, inputs: list, _args: dict):
    (x,) = inputs
    ranks = BATCH_NORM_RANKS[type(module).__name__]
    if x.dim() not in ranks:
        raise ValueError(f"expected {' or '.join(f'{r}D' for r in ranks)} input (got {x.dim()}D input)")
    if not x.is_floating_point():
        raise ValueError(f"expected a floating point input, got {str(x.dtype).removeprefix('torch.')}")
    if x.shape[1] != module.num_features:
        raise ValueError(f"expected {module.num_features} channels in dim 1, got {x.shape[1]}")
    return x


def _linear_rule(module, inputs: list, _args: dict):
    (x,) = inputs
    if x.dim() == 0 or x.shape[-1] != module.in_features:
        raise ValueError(f"expected input [..., {module.in_features}], got {list(x.shape)}")
    return x.new_empty((*x.shape[:-1], module.out_features))


def _adaptive_pool_rule(module, inputs: list, _args: dict):
    (x,) = inputs
    n = int(type(module).__name__[-2])  # AdaptiveAvgPool2d -> 2 spatial dims
    out = module.output_size  # an int, or a tuple/list with None for "keep this dim"
    size = tuple(out) if isinstance(out, (tuple, list)) else (out,) * n
    if x.dim() not in (n + 1, n + 2):
        raise ValueError(f"expected {n + 1}D or {n + 2}D input (got {x.dim()}D input)")
    spatial = tuple(x.shape[-n + k] if s is None else s for k, s in enumerate(size))
    return x.new_empty((*x.shape[:-n], *spatial))


def _layer_norm_rule(module, inputs: list, _args: dict):
    """LayerNorm: shaped like its input, whose last dims are `normalized_shape` (anything
    else is declined: the layer words the error). LayerNorm2d normalises dim 1 of
    [N, C, H, W] instead (ConvNeXt's, from torchvision.models.convnext)."""
    (x,) = inputs
    shape = tuple(module.normalized_shape)
    if type(module).__name__ == "LayerNorm2d":
        fits = x.dim() == 4 and (x.shape[1],) == shape
    else:
        fits = x.dim() >= len(shape) and tuple(x.shape[x.dim() - len(shape):]) == shape
    return x if fits and x.is_floating_point() else NotImplemented


def _identity_rule(_module, inputs: list, _args: dict):
    return inputs[0]  # StochasticDepth: the identity in eval, and shaped like its input in training


def _squeeze_excitation_rule(module, inputs: list, _args: dict):
    (x,) = inputs  # the input scaled per channel: shaped like it; the layer words any error
    if x.dim() not in (3, 4) or x.shape[-3] != module.fc1.in_channels or not x.is_floating_point():
        return NotImplemented
    return x


def _composite_rule(module, inputs: list, _args: dict):
    """A Sequential (torchvision's Conv2dNormActivation, MLP): its children in turn, each
    by its own rule where it has one (on meta tensors, in eval, a batch norm's kernel
    costs about 30 times a 3x3 convolution's)."""
    if len(inputs) != 1:
        return NotImplemented
    return module_output(module, inputs[0])


def module_output(module, x):
    """`module(x)` on a meta tensor, by the shape rules here where one applies: to the
    module's exact class (a subclass may change `forward`), then to a Sequential's
    children in turn; any other module is run."""
    import torch

    cls = type(module)
    if cls.__name__ in ELEMENTWISE and getattr(torch.nn, cls.__name__, None) is cls:
        return x
    if not _RULE_CLASSES:
        _RULE_CLASSES.update(_rule_classes())
    rule = _RULE_CLASSES.get(cls)
    out = NotImplemented if rule is None else rule(module, [x], {})
    if out is not NotImplemented:
        return out
    if isinstance(module, torch.nn.Sequential) and cls.forward is torch.nn.Sequential.forward:
        for child in module:
            x = module_output(child, x)
        return x
    return module(x)


def _rule_classes() -> dict:
    """SHAPE_RULES by class: torch.nn's, torchvision.ops' and TORCHVISION_MODEL_LAYERS'
    (the composites are walked by `module_output` itself)."""
    import importlib

    import torch.nn as nn
    import torchvision.ops as tvops

    rules = {}
    for name, rule in SHAPE_RULES.items():
        if rule is _composite_rule:
            continue
        home = (nn if hasattr(nn, name) else tvops if name in TORCHVISION_OPS else
                importlib.import_module(f"torchvision.models.{TORCHVISION_MODEL_LAYERS[name]}"))  # fmt: skip
        rules[getattr(home, name)] = rule
    return rules


SHAPE_RULES = {"Linear": _linear_rule, **dict.fromkeys(BATCH_NORM_RANKS, _batch_norm_rule),
               **dict.fromkeys(("AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d"),
                               _adaptive_pool_rule),
               "SqueezeExcitation": _squeeze_excitation_rule, "StochasticDepth": _identity_rule,
               "LayerNorm": _layer_norm_rule, "LayerNorm2d": _layer_norm_rule,
               **dict.fromkeys(("Conv2dNormActivation", "Conv3dNormActivation", "MLP"), _composite_rule)}  # fmt: skip
_RULE_CLASSES: dict = {}

# Modules with floating-point weights whose input is integer ids.
INTEGER_INPUTS = {"Embedding", "EmbeddingBag"}

_SKIP_ARGS = {"device", "dtype", "self"}
_NOT_OPS = {
    "Module", "Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict",
    "Container", "RNNBase", "RNNCellBase",
}  # fmt: skip
TORCHVISION_OPS = (
    "StochasticDepth", "SqueezeExcitation", "Conv2dNormActivation", "Conv3dNormActivation",
    "MLP", "Permute", "FrozenBatchNorm2d", "DropBlock2d", "DropBlock3d",
)  # fmt: skip

# Layers of torchvision's model files, each one op: their forward calls functions that
# read the weights themselves (Swin's attention) or pads by sizes read in forward, so
# `yamlnet import` keeps them whole; specs/zoo/swin.yaml writes Swin v1 out in ops.
TORCHVISION_MODEL_LAYERS = {
    "LayerNorm2d": "convnext",  # ConvNeXt's LayerNorm over channels
    "ShiftedWindowAttention": "swin_transformer", "ShiftedWindowAttentionV2": "swin_transformer",
    "PatchMerging": "swin_transformer", "PatchMergingV2": "swin_transformer",
    "ShiftedWindowAttention3d": "video.swin_transformer",
}  # fmt: skip


def register_torch_nn(registry) -> None:
    import torch.nn as nn

    for name in dir(nn):
        cls = getattr(nn, name)
        if (
            isinstance(cls, type)
            and issubclass(cls, nn.Module)
            and name not in _NOT_OPS
            and not name.startswith(("_", "Lazy"))
        ):
            registry.add(_lazy(name, cls, "torch.nn"), name)


def register_torchvision_ops(registry) -> None:
    def loader(name):
        def load() -> OpDef:
            import torchvision.ops as tvops

            return module_opdef(name, getattr(tvops, name), source="torchvision.ops")

        return load

    for name in TORCHVISION_OPS:
        registry.add(loader(name), name)

    def model_layer(name: str, module: str):
        def load() -> OpDef:
            import importlib

            cls = getattr(importlib.import_module(f"torchvision.models.{module}"), name)
            return module_opdef(name, cls, source="torchvision.models")

        return load

    for name, module in TORCHVISION_MODEL_LAYERS.items():
        registry.add(model_layer(name, module), name)


def _lazy(name: str, cls: type, source: str):
    return lambda: module_opdef(name, cls, source=source)


def module_opdef(name: str, cls: type, source: str = "plugin") -> OpDef:
    """Read an OpDef off an nn.Module class."""
    params = _init_params(cls)
    docs = _arg_docs(cls)
    rules = {**SHAPE_DERIVED, **SHAPE_DERIVED_BY_OP.get(name, {})}
    args = {}
    for p in params:
        required = p.default is inspect.Parameter.empty
        args[p.name] = ArgDef(
            p.name,
            schema=annotation_schema(p.annotation, None if required else p.default),
            required=required and p.name not in rules,
            default=None if required else _jsonable(p.default),
            doc=docs.get(p.name, ""),
            inferred=p.name in rules,
            layer=_is_layer(p.annotation),
        )
    lo, hi, names = _forward_inputs(cls)
    infer = {k: rules[k] for k in args if k in rules}
    doc = (inspect.getdoc(cls) or "").strip().split("\n\n")[0].replace("\n", " ")
    return OpDef(
        name, "module", cls, args, lo, hi, names, infer,
        open_args=any(p.kind is p.VAR_KEYWORD for p in _raw_params(cls)) and not params,
        doc=doc[:300], source=source, hint=SHAPE_HINTS.get(name, ""),
        int_inputs=name in INTEGER_INPUTS, same_shape=name in ELEMENTWISE, rule=SHAPE_RULES.get(name),
        takes_device=source == "torch.nn" and any(p.name == "device" for p in _raw_params(cls)),
    )  # fmt: skip


def _raw_params(cls: type) -> list[inspect.Parameter]:
    try:
        sig = inspect.signature(cls.__init__, eval_str=True)
    except Exception:  # noqa: BLE001 - unevaluable annotations: fall back to raw ones
        sig = inspect.signature(cls.__init__)
    return list(sig.parameters.values())[1:]


def _init_params(cls: type) -> list[inspect.Parameter]:
    import torch.nn as nn

    raw = _raw_params(cls)
    if issubclass(cls, (nn.RNNBase, nn.RNNCellBase)) and all(
        p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in raw
    ):
        # LSTM/GRU/RNN take *args/**kwargs and forward them to RNNBase(mode, ...).
        base = nn.RNNBase if issubclass(cls, nn.RNNBase) else nn.RNNCellBase
        raw = [p for p in _raw_params(base) if p.name not in ("mode", "num_chunks")]
        if cls.__name__ in ("RNN", "RNNCell"):
            raw.append(inspect.Parameter("nonlinearity", inspect.Parameter.KEYWORD_ONLY,
                                         default="tanh", annotation=str))  # fmt: skip
    return [
        p
        for p in raw
        if p.name not in _SKIP_ARGS and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def _forward_inputs(cls: type) -> tuple[int, int | None, tuple[str, ...]]:
    try:
        params = list(inspect.signature(cls.forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return 1, None, ()
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    lo = sum(1 for p in positional if p.default is inspect.Parameter.empty)
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return lo, None, tuple(p.name for p in positional)
    # Inputs fill forward's leading tensor parameters in order; flags (need_weights=...)
    # are not inputs: set them with `call:` on the node.
    tensors = []
    for p in positional:
        if _is_flag(p):
            break
        tensors.append(p.name)
    return lo, max(lo, len(tensors)), tuple(tensors)


def _is_flag(p: inspect.Parameter) -> bool:
    return p.annotation in (bool, int, float, str) or isinstance(p.default, (bool, int, float, str))


# A layer class argument (`activation_layer: Callable[..., nn.Module]`): an op's name, or a
# mapping with `op:` and that op's arguments (a functools.partial of its class).
LAYER = {"anyOf": [{"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
                   {"type": "object", "required": ["op"], "properties": {"op": {"type": "string"}}}]}  # fmt: skip


def _is_layer(ann: Any) -> bool:
    """Whether an annotation says "a callable that makes a module" (maybe Optional)."""
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        return any(_is_layer(a) for a in typing.get_args(ann) if a is not type(None))
    if typing.get_origin(ann) is not collections.abc.Callable:
        return False
    result = typing.get_args(ann)[-1] if typing.get_args(ann) else None
    return isinstance(result, type) and result.__name__ == "Module"


def annotation_schema(ann: Any, default: Any = None) -> dict:
    """A JSON Schema for a Python type annotation; {} when it cannot be said in YAML."""
    schema = _schema(ann) if ann is not inspect.Parameter.empty else None
    if schema is None and default is not None:
        schema = _schema(type(default))
    return schema or {}


_BASIC = {int: {"type": "integer"}, float: {"type": "number"}, bool: {"type": "boolean"},
          str: {"type": "string"}, type(None): {"type": "null"}}  # fmt: skip


def _schema(ann: Any) -> dict | None:
    if _is_layer(ann) and typing.get_origin(ann) not in (typing.Union, types.UnionType):
        return dict(LAYER)
    if ann in _BASIC:
        return dict(_BASIC[ann])
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        parts = [s for s in (_schema(a) for a in typing.get_args(ann)) if s is not None]
        unique = [p for i, p in enumerate(parts) if p not in parts[:i]]
        if not unique:
            return None
        return unique[0] if len(unique) == 1 else {"anyOf": unique}
    if origin is typing.Literal:
        return {"enum": list(typing.get_args(ann))}
    if origin in (tuple, list, collections.abc.Sequence) or ann in (tuple, list):
        items = [a for a in typing.get_args(ann) if a is not Ellipsis]
        item_schema = _schema(items[0]) if items else None
        out: dict = {"type": "array"}
        if item_schema:
            out["items"] = item_schema
        return out
    if getattr(ann, "__name__", "") == "Size":  # torch.Size: a list of ints
        return {"type": "array", "items": {"type": "integer"}}
    return None  # tensors, modules, callables: not expressible in a spec


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, type) and any(c.__name__ == "Module" for c in value.__mro__):
        return value.__name__  # a layer class default: norm_layer=nn.BatchNorm2d
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return None


_ARG_LINE = re.compile(r"^\s{2,}(\w+)\s*\(([^)]*)\)\s*:\s*(.*)$")


def _arg_docs(cls: type) -> dict[str, str]:
    docs: dict[str, str] = {}
    for line in (cls.__doc__ or "").splitlines():
        m = _ARG_LINE.match(line)
        if m and m.group(1) not in docs:
            docs[m.group(1)] = re.sub(r"[:`]+", "", m.group(3)).strip()[:200]
    return docs
