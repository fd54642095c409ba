"""Stage 2 — validate: a loaded `SpecSource` is checked against the JSON Schema, then
every node against its op's (or block's) argument schema. All problems are collected
and raised together as one `SchemaError`, sorted by position, one line each.

Values that are still expressions (`${...}`) are type-checked after expansion (see
`check_args`, which the expand stage calls with resolved values).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import best_match

from .errors import Diagnostic, SchemaError, did_you_mean
from .load import Document, SpecSource
from .registry import REGISTRY, OpDef
from .schema import (
    IDENT_PATTERN,
    NAME_PATTERN,
    NAME_RULE,
    NODE_KEYS,
    PARAM_TYPES,
    document_schema,
    iter_nodes,
)

__all__ = [
    "validate", "check_args", "collect_blocks", "format_path", "param_decl", "ParamDecl",
    "explain_schema_error", "schema_error_path",
]  # fmt: skip


def validate(source: SpecSource, registry=REGISTRY) -> None:
    """Raise `SchemaError` listing every problem in the spec and its includes."""
    problems: list[Diagnostic] = []
    for doc in (*source.includes, source.main):
        problems += _schema_problems(doc)
    main = source.main
    if not problems and "nodes" not in main.data:
        problems.append(Diagnostic("missing required key 'nodes'", main.loc(())))
    if not problems:
        blocks, dup = _blocks_with_problems(source)
        problems += dup
        for doc in (*source.includes, source.main):
            problems += _node_problems(doc, blocks, registry)
    if problems:
        problems.sort(key=lambda d: (d.loc.file, d.loc.line, d.loc.col) if d.loc else ("", 0, 0))
        raise SchemaError(diagnostics=_dedupe(problems))


def _dedupe(items: list[Diagnostic]) -> list[Diagnostic]:
    seen, out = set(), []
    for d in items:
        if str(d) not in seen:
            seen.add(str(d))
            out.append(d)
    return out


def format_path(path: tuple) -> str:
    """('nodes', 'fc', 'args', 0) -> 'nodes.fc.args[0]'"""
    out = ""
    for part in path:
        if isinstance(part, str) and not re.fullmatch(NAME_PATTERN, part):
            part = repr(part)  # a key that is no name ('a.b'): quoted, so the path reads right
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    return Draft202012Validator(document_schema())


def _schema_problems(doc: Document) -> list[Diagnostic]:
    if not isinstance(doc.data, dict):
        return [Diagnostic("a spec must be a mapping (yamlnet: 1, inputs:, nodes:, ...)",
                           doc.loc(()))]  # fmt: skip
    out = []
    for err in (leaf for top in _validator().iter_errors(doc.data) for leaf in _leaves(top)):
        path = schema_error_path(err)
        message, hint = explain_schema_error(err)
        out.append(Diagnostic(message, doc.loc(path), format_path(path), hint))
    return out


def _leaves(err) -> list:
    """The errors to report for one schema error. For anyOf/oneOf: every error of the
    alternative that matches the value's type (a mapping of nodes with three bad nodes
    gives three errors), not 'is not valid under any of the given schemas'."""
    if err.validator not in ("anyOf", "oneOf") or not err.context:
        return [err]
    if err.validator == "oneOf" and isinstance(err.instance, dict) and _node_kinds(err.instance) != 1:
        return [err]  # neither or several of op:/block:/nodes: — say that
    here = len(err.absolute_path)
    branches: dict[int, list] = {}
    for e in err.context:
        branches.setdefault(e.schema_path[0], []).append(e)
    typed = [b for b in branches.values()
             if not any(e.validator == "type" and len(e.absolute_path) == here for e in b)]  # fmt: skip
    if not typed:
        return [err]
    best = max(typed, key=lambda b: max((len(e.absolute_path), e.validator != "type") for e in b))
    return [leaf for e in best for leaf in _leaves(e)]


def _node_kinds(node: dict) -> int:
    return sum(k in node for k in ("op", "block", "nodes"))


def schema_error_path(err) -> tuple:
    """Where a jsonschema error points: its path, plus the unknown key for an
    additionalProperties error (so the message is located at the key itself)."""
    key = _key(err)
    return tuple(err.absolute_path) + ((key,) if key else ())


def _key(err) -> str | None:
    if err.validator == "additionalProperties":
        extra = [k for k in err.instance if k not in err.schema.get("properties", {})]
        return extra[0] if extra else None
    if list(err.schema_path)[-2:-1] == ["propertyNames"] and isinstance(err.instance, str):
        return err.instance  # a bad key: point at the key, not the mapping
    return None


def explain_schema_error(err) -> tuple[str, str]:
    """(message, hint) in yamlnet's words for one jsonschema error."""
    v, inst = err.validator, err.instance
    if v == "additionalProperties":
        key = _key(err)
        allowed = list(err.schema.get("properties", {}))
        return f"unknown key '{key}'", did_you_mean(str(key), allowed) or "allowed: " + ", ".join(allowed)
    if v == "required":
        missing = [k for k in err.validator_value if k not in inst]
        return f"missing required key '{missing[0]}'", ""
    if v == "type":
        return f"expected {_want(err.validator_value)}, got {_got(inst)}", ""
    if v == "const":
        return f"expected {err.validator_value!r}, got {_show(inst)}", ""
    if v == "enum":
        options = ", ".join(map(str, err.validator_value))
        return f"{_show(inst)} is not one of: {options}", did_you_mean(str(inst), err.validator_value)
    if v == "pattern":
        hint = ("use letters, digits and _, not starting with a digit" if err.validator_value == IDENT_PATTERN
                else NAME_RULE)  # fmt: skip
        return f"{_show(inst)} is not a valid name here", hint
    if v == "oneOf" and isinstance(inst, dict):
        return "a node needs exactly one of 'op:', 'block:' or 'nodes:'", ""
    if v in ("anyOf", "oneOf") and err.context and all(e.validator == "type" for e in err.context):
        wants = " or ".join(dict.fromkeys(_want(e.validator_value) for e in err.context))
        return f"expected {wants}, got {_got(inst)}", ""
    if v in ("minProperties", "minItems") and err.validator_value == 1:
        return "must not be empty", ""
    if v in ("maxItems", "minItems") and isinstance(inst, list):
        bound = "at most" if v == "maxItems" else "at least"
        return f"has {len(inst):,} items; {bound} {err.validator_value} are allowed", ""
    if v == "propertyNames":
        return _clip(err.message), ""
    return _clip(err.message), ""  # jsonschema's own words quote the whole value


def _clip(text: str, n: int = 300) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _want(t) -> str:
    names = {"integer": "an integer", "number": "a number", "string": "a string",
             "boolean": "true or false", "array": "a list", "object": "a mapping", "null": "null"}  # fmt: skip
    if isinstance(t, list):
        return " or ".join(names.get(x, x) for x in t)
    return names.get(t, t)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "mapping"}.get(type(value), type(value).__name__)  # fmt: skip


def _got(value: Any) -> str:
    """'integer 3', "string 'x'", 'null'"""
    return "null" if value is None else f"{_json_type(value)} {_show(value)}"


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def collect_blocks(source: SpecSource) -> dict[str, tuple[dict, Document, tuple]]:
    """Every block definition visible to the main spec: name -> (definition, doc, path)."""
    blocks, problems = _blocks_with_problems(source)
    if problems:
        raise SchemaError(diagnostics=problems)
    return blocks


def _blocks_with_problems(source: SpecSource):
    blocks: dict[str, tuple[dict, Document, tuple]] = {}
    problems = []
    for doc in (*source.includes, source.main):
        for name, body in ((doc.data or {}).get("blocks") or {}).items():
            if name in blocks:
                other = blocks[name][1].loc(("blocks", name))
                problems.append(Diagnostic(
                    f"block '{name}' is defined twice (also at {other})",
                    doc.loc(("blocks", name)), f"blocks.{name}"))  # fmt: skip
            blocks[name] = (body, doc, ("blocks", name))
            problems += _param_problems(body, doc, ("blocks", name, "params"))
    return blocks, problems


def _param_problems(body: dict, doc: Document, base: tuple) -> list[Diagnostic]:
    """Type names in `params:` must exist; a default that looks like a misspelt type name
    is refused rather than taken as a string."""
    out = []
    types = ", ".join(PARAM_TYPES)
    for key, decl in (body.get("params") or {}).items():
        path = base + (key,)
        if key in NODE_KEYS:
            out.append(Diagnostic(f"'{key}' cannot name a parameter: it is a node key", doc.loc(path),
                                  format_path(path), "rename it"))  # fmt: skip
        if isinstance(decl, dict) and "type" in decl and not set(decl) <= DECL_KEYS:
            extra = sorted(set(decl) - DECL_KEYS)[0]
            out.append(Diagnostic(f"unknown key '{extra}' in a parameter declaration",
                                  doc.loc(path + (extra,)), format_path(path + (extra,)),
                                  did_you_mean(extra, DECL_KEYS) or "keys: type, default, doc"))  # fmt: skip
        elif isinstance(decl, dict) and "type" in decl:
            if decl["type"] not in PARAM_TYPES:
                p = path + ("type",)
                out.append(Diagnostic(f"unknown parameter type {decl['type']!r}", doc.loc(p),
                                      format_path(p), f"types: {types}"))  # fmt: skip
        elif isinstance(decl, str) and decl not in PARAM_TYPES:
            close = difflib.get_close_matches(decl, list(PARAM_TYPES), n=1, cutoff=0.6)
            if close:
                out.append(Diagnostic(
                    f"{decl!r} is not a parameter type", doc.loc(path), format_path(path),
                    f"did you mean {close[0]}? For a string default write "
                    f"{{type: str, default: {decl}}}"))  # fmt: skip
    return out


def _node_problems(doc: Document, blocks: dict, registry) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    sections = [(doc.data.get("nodes"), ("nodes",))]
    for name, body in (doc.data.get("blocks") or {}).items():
        sections.append((body.get("nodes"), ("blocks", name, "nodes")))
    while sections:
        nodes, base = sections.pop(0)
        for _name, node, path in iter_nodes(nodes, base):
            out += _check_node(node, path, doc, blocks, registry)
            if "nodes" in node:
                sections.append((node["nodes"], path + ("nodes",)))
    return out


def _check_node(node: dict, path: tuple, doc: Document, blocks: dict, registry) -> list:
    def problem(msg, key=None, hint=""):
        p = path + ((key,) if key else ())
        return Diagnostic(msg, doc.loc(p), format_path(p), hint)

    args = {k: v for k, v in node.items() if k not in NODE_KEYS}
    if "tie" in node and "op" not in node:
        return [problem("tie: applies to op nodes only", "tie")]
    if "call" in node and "op" not in node:
        return [problem("call: applies to op nodes only", "call",
                        "pass block parameters as keys of the node")]  # fmt: skip
    if "name" in node and not isinstance(path[-1], int):
        return [problem("name: is only for nodes written as a list", "name",
                        "in a mapping the key is the name")]  # fmt: skip
    if "nodes" in node:
        return [problem(f"inline nodes: take no arguments ('{k}')", k, "define a block with params: instead")
                for k in args]  # fmt: skip
    if "block" in node:
        name = node["block"]
        if has_expr(name):
            return []  # chosen by an expression: checked when it is expanded
        if name not in blocks:
            return [problem(f"unknown block '{name}'", "block", did_you_mean(name, blocks)
                            or ("defined blocks: " + ", ".join(sorted(blocks)) if blocks else "no blocks are defined"))]  # fmt: skip
        return _check_block_args(blocks[name][0], name, args, problem)
    op_name = node["op"]
    if has_expr(op_name):
        return []
    if op_name not in registry:
        return [problem(f"unknown op '{op_name}'", "op", did_you_mean(op_name, registry.names())
                        or "yamlnet schema lists every op")]  # fmt: skip
    op = registry.get(op_name)
    out = [problem(m, k, h) for k, m, h in check_args(op, args, literal_only=True)]
    if "call" in node and op.kind in ("parameter", "buffer"):
        out.append(problem(f"call: does not apply to {op.name} (it is not called)", "call"))
    return out


def _check_block_args(block: dict, name: str, args: dict, problem) -> list:
    params = block.get("params") or {}
    out = []
    for key in args:
        if key not in params:
            out.append(problem(f"block '{name}' has no parameter '{key}'", key,
                               did_you_mean(key, params) or _list("parameters", params)))  # fmt: skip
    for key, decl in params.items():
        if param_decl(decl).required and key not in args:
            out.append(problem(f"block '{name}' needs parameter '{key}'"))
    return out


@dataclass(frozen=True)
class ParamDecl:
    """A block parameter declaration, in any of its three written forms."""

    type: str | None  # a PARAM_TYPES name, or None when only a default is given
    required: bool
    default: Any = None


DECL_KEYS = {"type", "default", "doc"}


def param_decl(decl: Any) -> ParamDecl:
    """`int` -> required int; `{type: int, default: 1}`; any other value -> the default."""
    if isinstance(decl, str) and decl in PARAM_TYPES:
        return ParamDecl(decl, True)
    if isinstance(decl, dict) and "type" in decl and set(decl) <= DECL_KEYS:
        return ParamDecl(decl["type"], "default" not in decl, decl.get("default"))
    return ParamDecl(None, False, decl)



def _list(what: str, names) -> str:
    names = list(names)
    return f"{what}: {', '.join(names)}" if names else f"it takes no {what}"


def check_args(op: OpDef, args: dict, *, literal_only: bool) -> list[tuple[str, str, str]]:
    """Problems with `args` for `op`, as (key, message, hint) triples.

    With `literal_only`, values holding `${...}` are skipped (they are checked again
    after expansion) and missing shape-derived arguments are fine.
    """
    out = []
    meant: set[str] = set()  # required arguments a misspelt key probably stands for
    for key, value in args.items():
        if key not in op.args:
            if not op.open_args:
                hint = did_you_mean(key, op.args)
                meant |= {a for a in op.args if hint == f"did you mean {a}?"}
                out.append((key, f"unknown argument '{key}' for {op.name}",
                            hint or _list("arguments", op.args)))  # fmt: skip
            continue
        if literal_only and has_expr(value):
            continue
        schema = op.args[key].schema
        if schema:
            err = best_match(_arg_validator(op.name, key, schema).iter_errors(value))
            if err is not None:
                want = _describe_schema(schema)
                hint = "use // or int(...) in the expression" if isinstance(value, float) and "integer" in want else ""
                out.append((key, f"{op.name}.{key} expects {want}, got {_got(value)}", hint))
                continue
        if op.args[key].layer and value is not None:
            out += [(key, f"{op.name}.{key}: {message}", hint) for message, hint in _layer_problems(value, literal_only)]
    for key, arg in op.args.items():
        if arg.required and key not in args and key not in meant:
            out.append(("", f"{op.name} needs argument '{key}'", arg.doc[:80] if arg.doc else ""))
    return out


def _layer_problems(value: str | dict, literal_only: bool) -> list[tuple[str, str]]:
    """Problems with a layer-class argument: an op name, or {op: Name, **arguments}."""
    name = value if isinstance(value, str) else value["op"]
    if literal_only and has_expr(name):
        return []
    if name not in REGISTRY:
        return [(f"unknown op {name!r}", did_you_mean(name, REGISTRY.names()))]
    layer = REGISTRY.get(name)
    if layer.kind != "module":
        return [(f"{name} is a {layer.kind}, not a layer (an nn.Module op)", "")]
    rest = {} if isinstance(value, str) else {k: v for k, v in value.items() if k != "op"}
    return [(m, h) for _, m, h in check_args(layer, rest, literal_only=literal_only)]


_ARG_VALIDATORS: dict[tuple[str, str], Draft202012Validator] = {}


def _strict_int(checker, value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# JSON Schema counts 16.0 as an integer; PyTorch constructors, a DataLoader and range() do not
# (op arguments and the run configuration are both checked with it)
StrictValidator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_int),
)


def _arg_validator(op: str, key: str, schema: dict) -> Draft202012Validator:
    v = _ARG_VALIDATORS.get((op, key))
    if v is None:
        v = _ARG_VALIDATORS[(op, key)] = StrictValidator(schema)
    return v


def _describe_schema(schema: dict) -> str:
    if "anyOf" in schema:
        return " or ".join(_describe_schema(s) for s in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join("null" if e is None else str(e) for e in schema["enum"])
    t = schema.get("type")
    if t == "array" and "items" in schema:
        return f"a list of {_describe_schema(schema['items']).removeprefix('a ').removeprefix('an ')}s"
    return _want(t) if t else "a value"


def has_expr(value: Any) -> bool:
    if isinstance(value, str):
        return "${" in value
    if isinstance(value, list):
        return any(has_expr(v) for v in value)
    if isinstance(value, dict):
        return any(has_expr(v) for v in value.values())
    return False
