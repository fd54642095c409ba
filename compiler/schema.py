"""The JSON Schema (Draft 2020-12) of a yamlnet spec, generated from the op registry.

`document_schema()` is the structural schema the validate stage checks first.
`published_schema()` adds, for every registered op, the schema of its arguments
(types and docs) so that editors using yaml-language-server complete them; it is
what `yamlnet schema` prints and `specs/schema.json` holds.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "document_schema", "published_schema", "iter_nodes", "NODE_KEYS", "PARAM_TYPES", "NAME_PATTERN", "NAME_CHARS",
    "NAME_RULE", "IDENT_PATTERN",
]  # fmt: skip

SCHEMA_ID = "https://yamlnet.dev/schema/v1.json"
# A node name is what PyTorch takes as a submodule name (`layer1`, `0`, RegNet's
# `block1-0`), less what the spec's own syntax needs: `.` joins a path (and PyTorch refuses
# it too), `[...]` indexes a reference, `$` starts an expression, quotes and backslashes
# would have to be escaped in generated code; no spaces or control characters either.
NAME_CHARS = r"[^.\[\]\s$\"'\\\x00-\x1f\x7f]"
NAME_PATTERN = rf"^{NAME_CHARS}+$"
NAME_RULE = "a name has no . [ ] $ quotes, backslashes or spaces"
IDENT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
REF_PATTERN = rf"^{NAME_CHARS}+(\[-?[0-9]+\])*$"
PATH_PATTERN = rf"^{NAME_CHARS}+(\.{NAME_CHARS}+)*$"  # a node inside blocks: layer1.0.conv1
NODE_KEYS = ("op", "block", "nodes", "in", "repeat", "if", "call", "name", "freeze", "splice", "tie", "feed",
             "checkpoint", "shard")
PARAM_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string",
               "list": "array", "dict": "object", "any": None}  # fmt: skip
DTYPES = ["float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8",
          "uint8", "bool"]  # fmt: skip

EXPR = {"type": "string", "pattern": r"\$\{", "description": "an expression ${...}"}


def _or_expr(schema: dict) -> dict:
    """`schema`, where the value or any item inside it may also be an expression."""
    inner = dict(schema)
    if isinstance(inner.get("items"), dict):
        inner["items"] = _or_expr(inner["items"])
    if "anyOf" in inner:
        inner["anyOf"] = [_or_expr(s) if "items" in s else s for s in inner["anyOf"]]
    return {"anyOf": [inner, {"$ref": "#/$defs/expr"}]}


def document_schema() -> dict[str, Any]:
    """The structural schema: every section, node and block; op arguments left open."""
    ref = {"type": "string", "pattern": REF_PATTERN}
    refs = {"anyOf": [ref, {"type": "array", "items": ref, "minItems": 1}]}
    ins = {"anyOf": [ref, {"type": "array", "items": ref}]}  # in: [] for a node that reads nothing
    dim = {"anyOf": [{"type": "integer", "minimum": 1},
                     {"type": "string", "pattern": IDENT_PATTERN}, {"$ref": "#/$defs/expr"}]}  # fmt: skip
    shape = {"type": "array", "items": dim, "minItems": 0, "maxItems": 16}
    init_item = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "file": {"type": "string", "description": "a .pt/.pth state_dict (or yamlnet checkpoint) "
                     "or .safetensors file, relative to the spec"},
            "torchvision": {"type": "string", "pattern": IDENT_PATTERN, "description": "instead of "
                            "file: a torchvision model's pretrained weights (resnet50), read from the "
                            "torch hub cache (never downloaded)"},
            "weights": {"type": "string", "pattern": IDENT_PATTERN,
                        "description": "with torchvision: the weights enum member (IMAGENET1K_V2; default DEFAULT)"},
            "into": {"type": "string", "pattern": PATH_PATTERN,
                     "description": "the node (subtree) to load into (default: the whole model)"},
            "from": {"type": "string", "description": "the key prefix in the file to load from"},
            "exclude": {"type": "array", "items": {"type": "string"},
                        "description": "model key prefixes to leave as built (a new head)"},
        },
    }
    node = {
        "type": "object",
        "description": "one op (op:) or one instance of a block (block:)",
        "properties": {
            "op": {"anyOf": [{"type": "string", "pattern": IDENT_PATTERN}, {"$ref": "#/$defs/expr"}],
                   "description": "an op from the registry (yamlnet schema lists them)"},
            "block": {"anyOf": [{"type": "string", "pattern": IDENT_PATTERN}, {"$ref": "#/$defs/expr"}],
                      "description": "a block defined under blocks: (here or in an included file); "
                      "an expression may choose one"},
            "in": {**ins, "description": "input node(s); default: the previous node; [] for none"},
            "repeat": {"anyOf": [_or_expr({"type": "integer", "minimum": 0}), {
                "type": "object", "required": ["times"], "additionalProperties": False,
                "properties": {"times": _or_expr({"type": "integer", "minimum": 0}),
                               "index": {"type": "string", "pattern": IDENT_PATTERN}}}],
                       "description": "copies: a count, or {times: n, index: name} to name the "
                       "copy number (default i), so that a repeat inside can still see it"},
            "if": _or_expr({"type": "boolean"}),
            "splice": {**_or_expr({"type": "boolean"}),
                       "description": "true (a block or inline group in a list): its nodes are "
                       "numbered in that list, as layers += [...] builds an nn.Sequential"},
            "tie": {"type": "object", "minProperties": 1, "propertyNames": {"pattern": IDENT_PATTERN},
                    "additionalProperties": {"type": "string", "pattern": PATH_PATTERN.replace(")*$", ")+$")},
                    "description": "share weights: {weight: embedding.weight} makes this op's weight "
                    "that parameter of the model (tied, saved under both names)"},
            "freeze": {**_or_expr({"type": "boolean"}),
                       "description": "true: no gradients for this node's weights, kept in eval mode"},
            "checkpoint": {**_or_expr({"type": "boolean"}),
                           "description": "true: in training, keep only this node's (each copy's) inputs "
                           "and recompute its inside during backward (activation checkpointing)"},
            "shard": {**_or_expr({"type": "boolean"}),
                      "description": "with train.strategy: fsdp, false: this block's instances are not "
                      "sharded on their own (they join the enclosing unit); true: this node (each copy) is"},
            "nodes": {"$ref": "#/$defs/nodes",
                      "description": "inline nodes: a submodule container (like nn.Sequential)"},
            "call": {"type": "object", "description": "keyword arguments passed at call time"},
            "name": {"anyOf": [{"type": "string", "pattern": NAME_PATTERN}, {"$ref": "#/$defs/expr"}],
                     "description": "the node's name in a list; with repeat, an expression of i names "
                     "each copy (encoder_layer_${i})"},
            "feed": {"enum": ["chain", "concat"],
                     "description": "how repeat feeds its copies: chain (each reads the one before) or "
                     "concat (each reads the input and every earlier copy, joined on dim 1)"},
        },
        "if": {"type": "object"},
        "then": {"oneOf": [{"required": ["op"]}, {"required": ["block"]}, {"required": ["nodes"]}]},
    }
    nodes = {
        "anyOf": [
            {"type": "object", "minProperties": 1,
             "propertyNames": {"pattern": NAME_PATTERN}, "additionalProperties": {"$ref": "#/$defs/node"}},
            {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/node"}},
        ]
    }  # fmt: skip
    param = {"description": "a type name (int, float, bool, str, list, dict, any) for a "
             "required parameter, a default value, or {type:, default:, doc:}"}
    block = {
        "type": "object",
        "additionalProperties": False,
        "required": ["nodes"],
        "properties": {
            "doc": {"type": "string"},
            "params": {"type": "object", "propertyNames": {"pattern": IDENT_PATTERN},
                       "additionalProperties": param},
            "let": {"type": "object", "propertyNames": {"pattern": IDENT_PATTERN},
                    "description": "names computed for each instance, in order, after params: "
                    "(shape() may name the block's inputs)"},
            "inputs": {"type": "array", "items": {"type": "string", "pattern": IDENT_PATTERN},
                       "uniqueItems": True, "description": "the block's input names (default [input]; "
                       "[] for a block that reads nothing, such as one that computes a constant)"},
            "nodes": {"$ref": "#/$defs/nodes"},
            "outputs": refs,
        },
    }  # fmt: skip
    input_def = {"anyOf": [shape, {
        "type": "object", "required": ["shape"], "additionalProperties": False,
        "properties": {"shape": shape, "dtype": {"enum": DTYPES}, "doc": {"type": "string"}}}]}  # fmt: skip
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "yamlnet model spec",
        "type": "object",
        "required": ["yamlnet"],
        "additionalProperties": False,
        "properties": {
            "yamlnet": {"const": 1, "description": "spec format version"},
            "name": {"type": "string"},
            "description": {"type": "string"},
            "include": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                        "description": "spec files whose blocks: this spec may use"},
            "vars": {"type": "object", "propertyNames": {"pattern": IDENT_PATTERN}},
            "inputs": {"type": "object", "minProperties": 1,
                       "propertyNames": {"pattern": IDENT_PATTERN},
                       "additionalProperties": {"$ref": "#/$defs/input"}},
            "outputs": {"anyOf": [refs, {"type": "object", "minProperties": 1,
                                         "propertyNames": {"pattern": IDENT_PATTERN},
                                         "additionalProperties": ref}]},
            "train_outputs": {"anyOf": [refs, {"type": "object", "minProperties": 1,
                                               "propertyNames": {"pattern": IDENT_PATTERN},
                                               "additionalProperties": ref}],
                              "description": "outputs computed in training only (auxiliary heads that "
                              "feed a loss term); eval, export and predict return outputs: alone"},
            "blocks": {"type": "object", "propertyNames": {"pattern": IDENT_PATTERN},
                       "additionalProperties": {"$ref": "#/$defs/block"}},
            "nodes": {"$ref": "#/$defs/nodes"},
            "init": {"anyOf": [init_item, {"type": "array", "items": init_item, "minItems": 1}],
                     "description": "weights to load when the model is built"},
            "freeze": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 400}, "maxItems": 1000,
                       "description": "nodes whose weights get no gradients (kept in eval mode), by name or "
                       "glob over node and module paths: [conv1, bn1, \"layer*\"]"},
            "meta": {"type": "object", "description": "free-form facts (class_names, ...)"},
            # How to train: checked by the runtime (yamlnet.runtime.config), whose schema
            # the published schema merges in for editors; the compiler only needs a mapping.
            "data": {"type": "object", "description": "the dataset and its loader (training)"},
            "train": {"type": "object", "description": "optimizer, loss, epochs, checkpoints"},
            "tune": {"type": "object", "description": "a hyperparameter search for `yamlnet tune` "
                     "(space, metric, direction, trials, pruner, sampler, storage)"},
        },
        "$defs": {"expr": EXPR, "node": node, "nodes": nodes, "block": block, "input": input_def},
    }  # fmt: skip


def published_schema(registry=None) -> dict[str, Any]:
    """The document schema plus per-op argument schemas, for editors and `yamlnet schema`."""
    from .registry import REGISTRY

    reg = registry or REGISTRY
    schema = document_schema()
    defs = schema["$defs"]
    ops = list(reg.all())
    defs["node"]["properties"]["op"]["anyOf"][0] = {"enum": [op.name for op in ops]}
    branches = []
    for op in ops:
        props = {k: {**(_or_expr(a.schema) if a.schema else {}), **_describe(a)}
                 for k, a in op.args.items()}  # fmt: skip
        key = "op_" + op.name
        defs[key] = {"description": op.doc, "properties": props}
        branches.append({"if": {"required": ["op"], "properties": {"op": {"const": op.name}}},
                         "then": {"$ref": f"#/$defs/{key}"}})  # fmt: skip
    defs["node"]["allOf"] = branches
    return schema


def _describe(arg) -> dict:
    text = arg.doc or ""
    if arg.inferred:
        text = (text + " " if text else "") + "(inferred from the input shape when omitted)"
    out = {"description": text} if text else {}
    if arg.default is not None:
        out["default"] = arg.default
    return out


def iter_nodes(nodes: Any, path: tuple):
    """Yield (name, node, path) for a `nodes:` section in mapping or list form.

    In list form a node's name is its `name:` or, by default, its index ("0", "1", ...),
    which gives the numbered submodules of an nn.Sequential.
    """
    if isinstance(nodes, dict):
        for name, node in nodes.items():
            yield str(name), node, path + (name,)
    elif isinstance(nodes, list):
        for i, node in enumerate(nodes):
            name = node.get("name") if isinstance(node, dict) else None
            yield (str(name) if name is not None else str(i)), node, path + (i,)
