"""Stage 3 — expand: a validated spec -> `ExpandedSpec`, a flat list of fully resolved
nodes with hierarchical names (the "lockfile" view printed by `yamlnet expand`).

What happens here:
- `vars:` are evaluated in order (command-line overrides replace them first);
- every `${...}` in arguments, `repeat:` and `if:` is evaluated (see `expr.py`);
- blocks are instantiated with their parameters; each instance's nodes are named
  under it (`layer1.0.conv1`), which becomes the module hierarchy and state_dict keys;
- `repeat: n` makes instances `name.0 ... name.{n-1}`, chained, each seeing `i`;
- a node whose `if:` is false is left out and passes its (first) input through;
- a node's `in:` defaults to the previous node; names are resolved within their
  scope (the block instance), so blocks never see each other's insides.

Names that are not defined yet are allowed (they resolve when their scope ends), so a
spec can describe a cycle; the graph stage finds it and names it.
"""

from __future__ import annotations

import fnmatch
import keyword
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from .errors import ExprError, GraphError, Location, SchemaError, SpecError, did_you_mean
from .expr import Scope, resolve
from .load import Document, SpecSource, load_document
from .registry import REGISTRY
from .schema import NAME_CHARS, NAME_PATTERN, NAME_RULE, NODE_KEYS, iter_nodes
from .validate import check_args, collect_blocks, format_path, has_expr, param_decl

__all__ = ["Ref", "InputSpec", "NodeSpec", "ExpandedSpec", "expand", "parse_ref", "LIMITS", "InitSpec",
           "FreezePattern", "WeightsOverlay", "init_specs", "frozen_paths"]  # fmt: skip

LIMITS = {"max_nodes": 50_000, "max_block_depth": 32}
RESERVED = {"i", "shape", "input", "true", "false", "none"}


@dataclass(frozen=True)
class Ref:
    """A tensor: the output of `node`, optionally indexed into a tuple output."""

    node: str
    index: tuple[int, ...] = ()
    # how the spec wrote it, where that differs (an index into a left-out node): for errors
    written: str = field(default="", compare=False, repr=False)

    def __str__(self) -> str:
        return self.node + "".join(f"[{i}]" for i in self.index)


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple  # ints and symbolic dim names
    dtype: str = "float32"
    loc: Location | None = None


@dataclass(frozen=True)
class NodeSpec:
    """One resolved node: an op with its final arguments and input tensors."""

    name: str  # hierarchical: layer1.0.conv1
    op: str
    inputs: tuple[Ref, ...]
    args: dict = field(default_factory=dict)
    call: dict = field(default_factory=dict)
    loc: Location | None = None
    path: str = ""  # where it is written: blocks.basic.nodes.conv1
    tie: tuple[tuple[str, str], ...] = ()  # (own parameter, the model's parameter it shares)


@dataclass(frozen=True)
class InitSpec:
    """One `init:` item: load `file`'s keys under `source` into the model under `into`.
    A `torchvision:` item names a model's pretrained weights instead of a file: its path
    is found in the torch hub cache when the model is built (compiler/pretrained.py)."""

    file: str  # as written ("" for a torchvision item)
    path: str  # resolved against the spec's folder
    into: str = ""
    source: str = ""  # the `from:` prefix
    exclude: tuple[str, ...] = ()
    loc: Location | None = None
    where: str = "init"
    torchvision: str = ""  # a torchvision.models name (resnet50)
    weights: str = ""  # its weights enum member (IMAGENET1K_V2)

    @property
    def label(self) -> str:
        """How messages name it: the file, or `torchvision resnet50 IMAGENET1K_V2`."""
        return self.file or f"torchvision {self.torchvision} {self.weights or 'DEFAULT'}"


@dataclass(frozen=True)
class FreezePattern:
    """One item of a `freeze:` list: a node name or a glob over node and module paths."""

    pattern: str
    loc: Location | None = None
    where: str = "freeze"


@dataclass(frozen=True)
class WeightsOverlay:
    """`init:` and `freeze:` given by a run configuration (a config file, `--set`): each
    one that is not None takes the place of the spec's top-level key of that name."""

    init: tuple[InitSpec, ...] | None = None
    freeze: tuple[FreezePattern, ...] | None = None


@dataclass(frozen=True)
class ExpandedSpec:
    name: str
    inputs: tuple[InputSpec, ...]
    nodes: tuple[NodeSpec, ...]
    outputs: tuple[tuple[str, Ref], ...]
    vars: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    file: str = "<spec>"
    outputs_loc: Location | None = None
    # outputs computed in training only, after `outputs` (auxiliary heads for a loss term)
    train_outputs: tuple[tuple[str, Ref], ...] = ()
    frozen: tuple[str, ...] = ()  # nodes (subtrees) written with freeze: true
    # nodes and block instances (each repeat copy) written with checkpoint: true, outermost
    checkpointed: tuple[str, ...] = ()
    block_instances: tuple[str, ...] = ()  # every instance of a block (each repeat copy), not spliced
    block_names: tuple[str, ...] = ()  # the block each of block_instances is an instance of
    # nodes and block instances written with shard: true or false (FSDP's units; runtime/sharding.py)
    sharding: tuple[tuple[str, bool], ...] = ()
    init: tuple[InitSpec, ...] = ()  # weights loaded when the model is built
    freeze: tuple[str, ...] = ()  # the freeze: patterns (of the spec or the run), as written

    @property
    def symbols(self) -> dict[str, tuple[str, int]]:
        """Symbolic dim name -> (input name, dim) where it is first declared."""
        out: dict[str, tuple[str, int]] = {}
        for inp in self.inputs:
            for d, dim in enumerate(inp.shape):
                if isinstance(dim, str):
                    out.setdefault(dim, (inp.name, d))
        return out


_REF = re.compile(rf"^({NAME_CHARS}+)((?:\[-?[0-9]+\])*)$")


def parse_ref(text: str) -> tuple[str, tuple[int, ...]]:
    """'lstm[0][1]' -> ('lstm', (0, 1))"""
    m = _REF.match(text)
    if not m:
        raise ValueError(text)
    return m.group(1), tuple(int(x) for x in re.findall(r"-?[0-9]+", m.group(2)))


ShapeOracle = Callable[[Ref, list, tuple], list]


def expand(
    source: SpecSource,
    overrides: dict[str, Any] | None = None,
    *,
    registry=REGISTRY,
    shape_of: ShapeOracle | None = None,
    checkpoint_blocks: tuple[str, ...] = (),
    overlay: WeightsOverlay | None = None,
) -> ExpandedSpec:
    """Resolve a validated spec into a flat node list.

    `overrides` replace `vars:` by name (`{"depth": 50}`); `shape_of(ref, nodes, inputs)`
    answers `shape(name)` in expressions (the compile pipeline passes the shapes stage);
    every instance of a block named in `checkpoint_blocks` is checkpointed, as if written
    with `checkpoint: true` (a run configuration's `train.activation_checkpointing`);
    `overlay` gives `init:` and `freeze:` in place of the spec's (a run configuration's).
    """
    expander = _Expander(source, registry, shape_of)
    unknown = [b for b in checkpoint_blocks if b not in expander.blocks]
    if unknown:
        known = ", ".join(sorted(expander.blocks)) or "none"
        raise SpecError(f"activation checkpointing names block '{unknown[0]}', which the spec does not define",
                        hint=did_you_mean(unknown[0], list(expander.blocks)) or f"its blocks: {known}")  # fmt: skip
    expander.checkpoint_blocks = frozenset(checkpoint_blocks)
    expander.overlay = overlay or WeightsOverlay()
    return expander.run(overrides or {})


class _Pending:
    """A name used before its definition in the same scope (resolved at scope end)."""

    def __init__(self, scope: _Env, name: str, loc, path):
        self.scope, self.name, self.loc, self.path = scope, name, loc, path


@dataclass
class _Env:
    """One naming scope: the top level or one block instance."""

    refs: dict[str, Any]  # local name -> Ref | tuple[Ref, ...] | _Skipped
    scope: Scope
    prefix: str
    prev: Any = None
    pending: list = field(default_factory=list)
    skips: dict = field(default_factory=dict)  # left-out node -> (input name, loc, path)
    number: int = 0  # where a list-form nodes: starts numbering (past it, once expanded)
    given: frozenset = frozenset()  # a spliced group's input names (not the list's)
    left_out: set = field(default_factory=set)  # names of nodes left out by if: false or repeat: 0


@dataclass(frozen=True)
class _Skipped:
    """A node left out by `if:` that has no input to pass through (a Parameter)."""

    name: str
    inputs: tuple
    loc: Any = None
    path: str = ""


class _Expander:
    def __init__(self, source: SpecSource, registry, shape_of):
        self.doc = source.main
        self.data = source.main.data
        self.blocks = collect_blocks(source)
        self.registry = registry
        self.shape_of = shape_of
        self.nodes: list[NodeSpec] = []
        self.names: dict[str, Location | None] = {}
        self.problems: list = []
        self.block_stack: list[str] = []
        self.instances: list[str] = []  # the block instances being expanded, innermost last
        self.inputs: tuple[InputSpec, ...] = ()
        self.variables: dict[str, Any] = {}
        self.steps = 0
        self.unresolved: list[int] = []  # indices of nodes with not-yet-defined inputs
        self.frozen: list[str] = []
        self.checkpointed: list[str] = []
        self.checkpoint_blocks: frozenset = frozenset()
        self.block_instances: list[str] = []
        self.block_names: list[str] = []
        self.sharding: list[tuple[str, bool]] = []
        self.overlay = WeightsOverlay()

    # ---- top level -------------------------------------------------------------
    def run(self, overrides: dict) -> ExpandedSpec:
        variables = self.variables = self._vars(overrides)
        scope = Scope(dict(variables))
        self.inputs = self._inputs(scope)
        env = _Env({inp.name: Ref(inp.name) for inp in self.inputs}, scope, "")
        for inp in self.inputs:
            self.names[inp.name] = inp.loc
        env.prev = Ref(self.inputs[0].name) if self.inputs else None
        self._expand_nodes(self.data["nodes"], self.doc, ("nodes",), env)
        outputs = self._outputs(env)
        train = self._outputs(env, "train_outputs", taken={n for n, _ in outputs})
        self._finish_scope(env)
        outputs = tuple((n, self._final(r, env)) for n, r in outputs)
        train = tuple((n, self._final(r, env)) for n, r in train)
        for key, pairs in (("outputs", outputs), ("train_outputs", train)):
            for n, r in pairs:
                if isinstance(r, tuple):
                    raise _bundle_error(f"output '{n}' is", r, self.doc.loc((key,)), key)
        if self.problems:  # one line per problem, not per repeated instance
            raise SchemaError(diagnostics=list(dict.fromkeys(self.problems)))
        patterns = self._freeze_patterns()
        frozen = outermost(self.frozen + frozen_paths(patterns, [n.name for n in self.nodes]))
        return ExpandedSpec(
            name=str(self.data.get("name") or _stem(self.doc.file)),
            inputs=self.inputs,
            nodes=tuple(self.nodes),
            outputs=outputs,
            vars=variables,
            meta=dict(self.data.get("meta") or {}),
            file=self.doc.file,
            outputs_loc=self.doc.loc(("outputs",)),
            train_outputs=train,
            frozen=frozen,
            checkpointed=outermost(self.checkpointed),
            block_instances=tuple(self.block_instances),
            block_names=tuple(self.block_names),
            sharding=tuple(self.sharding),
            init=self._init(),
            freeze=tuple(p.pattern for p in patterns),
        )

    def _init(self) -> tuple[InitSpec, ...]:
        if self.overlay.init is not None:
            return self.overlay.init
        folder = os.path.dirname(self.doc.file) if os.path.isfile(self.doc.file) else os.getcwd()
        return init_specs(self.data.get("init"), folder, lambda path: self.doc.loc(path))

    def _freeze_patterns(self) -> tuple[FreezePattern, ...]:
        if self.overlay.freeze is not None:
            return self.overlay.freeze
        return tuple(FreezePattern(p, self.doc.loc(("freeze", k)), f"freeze[{k}]")
                     for k, p in enumerate(self.data.get("freeze") or []))  # fmt: skip

    def _vars(self, overrides: dict) -> dict:
        declared = self.data.get("vars") or {}
        for key in overrides:
            if key not in declared:
                hint = did_you_mean(key, declared) or _names_hint("variables", declared)
                raise SpecError(f"unknown variable '{key}' in override", None, "vars", hint)
        values: dict[str, Any] = {}
        for key, value in declared.items():
            if key in RESERVED:
                raise SchemaError(f"'{key}' is a reserved name", self.doc.loc(("vars", key)), f"vars.{key}")
            raw = overrides.get(key, value)
            values[key] = resolve(raw, Scope(dict(values)), self.doc.loc(("vars", key)), f"vars.{key}")
        return values

    def _inputs(self, scope: Scope) -> tuple[InputSpec, ...]:
        out = []
        for name, decl in (self.data.get("inputs") or {}).items():
            path = ("inputs", name)
            shape = decl if isinstance(decl, list) else decl["shape"]
            dtype = "float32" if isinstance(decl, list) else decl.get("dtype", "float32")
            loc = self.doc.loc(path)
            dims = []
            for d, dim in enumerate(resolve(shape, scope, loc, format_path(path))):
                if isinstance(dim, bool) or not (isinstance(dim, str) and dim.isidentifier()
                                                 or isinstance(dim, int) and dim >= 1):  # fmt: skip
                    raise SchemaError(f"dim {d} must be a positive integer or a symbol name, got {dim!r}",
                                      loc, format_path(path))  # fmt: skip
                dims.append(dim)
            if name == "self" or keyword.iskeyword(name):
                raise SchemaError(f"'{name}' cannot name an input (a Python keyword or self)",
                                  loc, format_path(path), "rename it")  # fmt: skip
            out.append(InputSpec(name, tuple(dims), dtype, loc))
        return tuple(out)

    def _outputs(self, env: _Env, key: str = "outputs", taken: frozenset | set = frozenset()) -> list:
        """(name, reference) pairs of `outputs:` (default: the last node) or of
        `train_outputs:` (default: none), whose names must differ from the outputs'."""
        spec = self.data.get(key)
        loc = self.doc.loc((key,))
        if spec is None:
            if key != "outputs":
                return []
            if env.prev is None:
                raise GraphError("the spec has no nodes to output", loc, "outputs")
            return [("output", env.prev)]
        if isinstance(spec, str):
            spec = [spec]
        pairs = spec.items() if isinstance(spec, dict) else ((parse_ref(s)[0], s) for s in spec)
        out, seen = [], set(taken)
        for name, text in pairs:
            if name in seen:
                raise GraphError(f"two outputs would be named '{name}'", loc, key,
                                 f"name them: {key}: {{a: 'x[0]', b: 'x[1]'}}")  # fmt: skip
            seen.add(name)
            node = parse_ref(text)[0] if _REF.match(text) else ""
            if node in env.left_out:  # it would silently give what the node would have read
                what = f"output '{node}'" if node == name else f"output '{name}' is '{node}', which"
                raise GraphError(f"{what} is left out (if: false or repeat: 0)",
                                 loc, key, "output the node before it, or keep the node")  # fmt: skip
            out.append((name, self._lookup(text, env, loc, key)))
        return out

    # ---- nodes -----------------------------------------------------------------
    def _expand_nodes(self, nodes, doc: Document, base: tuple, env: _Env) -> None:
        """A `nodes:` section. In list form the kept nodes are numbered 0, 1, 2, ... like
        the children of an nn.Sequential: a left-out node takes no number, and a repeated
        node without `name:` takes one number per copy."""
        number = env.number if isinstance(nodes, list) else None
        for name, node, path in iter_nodes(nodes, base):
            if number is not None and "name" not in node:
                number += self._node(str(number), node, path, doc, env, numbered=True)
            else:  # a mapping's node, or a list's node with name: (it takes no number)
                self._node(name, node, path, doc, env)
        if number is not None:
            env.number = number

    def _node(self, name: str, node: dict, path: tuple, doc: Document, env: _Env, numbered: bool = False) -> int:
        """Expand one node; returns how many list numbers it took (0 when left out)."""
        loc, where = doc.loc(path), format_path(path)
        self._count(1, loc, where)  # nodes and block instances: blocks calling blocks grow too
        scope = env.scope.child()
        scope.shape_of = self._shape_fn(env)
        inputs = self._inputs_of(node, env, loc, where)
        keep = self._condition(node, scope, path, doc)
        repeat = self._repeat(node, scope, path, doc) if keep else 0
        if repeat == 0:  # left out: the node passes its input through
            if "in" not in node and self._takes_no_input(node):
                inputs = ()  # a Parameter or Buffer reads nothing, so passes nothing
            passed = self._left_out(name, node, inputs, None if numbered else env, loc, where)
            if not numbered:
                self._check_name(name, env, loc, where)
                env.refs[name] = passed
            env.prev = passed
            return 0
        if self._flag(node, "splice", scope, path, doc):
            for key in ("feed", "name"):
                if key in node:
                    raise SchemaError(f"splice: a spliced group takes the list's numbers, so it has no {key}:",
                                      doc.loc(path + (key,)), where)  # fmt: skip
            frozen = self._flag(node, "freeze", scope, path, doc)
            if self._checkpoint(node, scope, path, doc):
                raise SchemaError("checkpoint: needs a node of its own to recompute; a spliced group's nodes "
                                  "join the list", doc.loc(path + ("checkpoint",)), where,
                                  "checkpoint the block that holds the list, or its nodes one by one")  # fmt: skip
            if "shard" in node:
                raise SchemaError("shard: needs a node of its own to shard; a spliced group's nodes join the list",
                                  doc.loc(path + ("shard",)), where, "write shard: on its nodes one by one")  # fmt: skip
            return self._splice(name, node, inputs, repeat, scope, path, doc, env, numbered, frozen)
        splice = numbered and "repeat" in node  # copies numbered in the list itself
        names = [str(int(name) + k) for k in range(repeat)] if splice else [name]
        if has_expr(name):  # name: encoder_layer_${i}: the copies sit side by side, so named
            if "repeat" not in node:
                raise SchemaError("a name with an expression needs repeat:", loc, where)
            names, splice = [self._copy_name(name, _copy_scope(node, scope, k), path, doc)
                             for k in range(repeat)], True  # fmt: skip
            twice = next((n for k, n in enumerate(names) if n in names[:k]), None)
            if twice is not None:
                raise SchemaError(f"name: gives two copies the name '{twice}'", doc.loc(path + ("name",)),
                                  where + ".name", "make the name differ with i")  # fmt: skip
        for n in names:
            self._check_name(n, env, loc, where)
        full = env.prefix + name
        if self._flag(node, "freeze", scope, path, doc):
            self.frozen += [env.prefix + n for n in names] if splice else [full]
        if "shard" in node:  # each copy its own unit (or none)
            on = self._flag(node, "shard", scope, path, doc)
            self.sharding += [(p, on) for p in ([env.prefix + n for n in names] if splice else
                              [f"{full}.{k}" for k in range(repeat)] if "repeat" in node else [full])]  # fmt: skip
        if self._checkpoint(node, scope, path, doc):  # each copy is recomputed on its own
            self.checkpointed += ([env.prefix + n for n in names] if splice else
                                  [f"{full}.{k}" for k in range(repeat)] if "repeat" in node else [full])  # fmt: skip
        out: Any = inputs
        concat = node.get("feed") == "concat"
        if "feed" in node and "repeat" not in node:
            raise SchemaError("feed: applies to a node with repeat:", doc.loc(path + ("feed",)), where)
        outs: list = []
        for k in range(repeat):
            if concat and k:  # each copy reads the input and all earlier copies, joined
                copy = names[k] if splice else f"{name}.{k}"
                ins = self._join(inputs, outs, copy + "_in", env, loc, where)
                out = ins[0]
            if splice:  # copies named in this scope, not under one name
                inst_name = env.prefix + names[k]
            else:
                inst_name = f"{full}.{k}" if "repeat" in node else full
            inst_scope = _copy_scope(node, scope, k)
            ins = out if isinstance(out, tuple) else (out,)  # instance k feeds instance k+1
            if "block" in node:
                self.block_instances.append(inst_name)
                self.block_names.append(str(node["block"]))
            out = self._instance(node, inst_name, ins, inst_scope, path, doc, env)
            outs.append(out)
            if splice:
                env.refs[names[k]] = out
        if concat:  # the node's output: all copies joined (a copy's name still means the copy)
            last = names[-1] if splice else f"{name}.{repeat - 1}"
            out = self._join(inputs, outs, last + "_out", env, loc, where)[0]
        if splice:
            env.prev = out
        else:
            env.refs[name] = env.prev = out
        return len(names)

    def _count(self, n: int, loc, where) -> None:
        self.steps += n
        if self.steps > LIMITS["max_nodes"]:
            raise SpecError(f"spec expands to more than {LIMITS['max_nodes']} nodes", loc, where)

    def _check_name(self, name: str, env: _Env, loc, where) -> None:
        if name in env.refs and not isinstance(env.refs[name], _Pending):
            raise GraphError(f"duplicate name '{name}'", loc, where,
                             "node names must be unique within their block")  # fmt: skip
        if name in _module_attributes() or keyword.iskeyword(name):
            raise GraphError(f"'{name}' cannot name a node: it is a Python keyword or an "
                             "attribute of nn.Module", loc, where, "rename it")  # fmt: skip

    def _condition(self, node: dict, scope: Scope, path: tuple, doc: Document) -> bool:
        if "if" not in node:
            return True
        loc = doc.loc(path + ("if",))
        keep = resolve(node["if"], scope, loc, format_path(path) + ".if")
        if not isinstance(keep, bool):
            raise ExprError(f"if: must be true or false, got {keep!r}", loc, format_path(path))
        return keep

    def _flag(self, node: dict, key: str, scope: Scope, path: tuple, doc: Document) -> bool:
        """A true/false node key (freeze:, splice:)."""
        if key not in node:
            return False
        loc = doc.loc(path + (key,))
        value = resolve(node[key], scope, loc, format_path(path) + "." + key)
        if not isinstance(value, bool):
            raise ExprError(f"{key}: must be true or false, got {value!r}", loc, format_path(path))
        return value

    def _checkpoint(self, node: dict, scope: Scope, path: tuple, doc: Document) -> bool:
        """checkpoint: true written on the node, or its block named by the run configuration."""
        return self._flag(node, "checkpoint", scope, path, doc) or node.get("block") in self.checkpoint_blocks

    def _copy_name(self, template: str, scope: Scope, path: tuple, doc: Document) -> str:
        loc, where = doc.loc(path + ("name",)), format_path(path) + ".name"
        name = resolve(template, scope, loc, where)
        if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
            raise SchemaError(f"name: {name!r} is not a valid name", loc, where, NAME_RULE)
        return name

    def _join(self, inputs: tuple, outs: list, local: str, env: _Env, loc, where) -> tuple:
        """A cat node (dim 1) of the node's input and the copies so far (feed: concat)."""
        refs = []
        for value in (*inputs[:1], *outs):
            if isinstance(value, tuple):
                raise _bundle_error("feed: concat got", value, loc, where)
            refs.append(value)
        self._count(len(refs), loc, where)  # joins grow with the square of the copies
        name = env.prefix + local
        if "." not in local:  # a name in this scope: it must be free, and it can be used
            self._check_name(local, env, loc, where)
            env.refs[local] = Ref(name)
        if any(not isinstance(r, Ref) for r in refs):
            self.unresolved.append(len(self.nodes))
        self.nodes.append(NodeSpec(name, "cat", tuple(refs), {"dim": 1}, {}, loc, self._mark(where)))
        return (Ref(name),)

    def _splice(self, name, node, inputs, repeat, scope, path, doc, env, numbered, frozen) -> int:
        """A block or inline group whose nodes join the enclosing list, numbered in it
        (as `layers += [conv, bn, relu]` builds an nn.Sequential); once per copy."""
        loc, where = doc.loc(path + ("splice",)), format_path(path)
        if not numbered or "op" in node:
            raise SchemaError("splice: applies to a block or inline nodes: written in a list-form nodes:",
                              loc, where, "its nodes are numbered in that list")  # fmt: skip
        start = int(name)
        out: Any = inputs
        for k in range(repeat):
            inst_scope = _copy_scope(node, scope, k)
            ins = out if isinstance(out, tuple) else (out,)
            inner_env = _Env({}, inst_scope, env.prefix, number=start)
            if "block" in node:
                out = self._block(node, env.prefix, ins, inst_scope, path, doc, into=inner_env)
            else:
                out = self._inline(node, env.prefix, ins, inst_scope, path, doc, into=inner_env)
            added = [key for key, ref in inner_env.refs.items()  # the list's new numbers, and named nodes
                     if key not in inner_env.given and not isinstance(ref, _Pending)]  # fmt: skip
            for key in added:
                self._check_name(key, env, loc, where)
                env.refs[key] = inner_env.refs[key]
            if frozen:
                self.frozen += [env.prefix + key for key in added]
            start = inner_env.number
        if isinstance(out, tuple):
            raise _bundle_error("a spliced group is", out, loc, where)
        env.prev = out
        return start - int(name)

    def _repeat(self, node: dict, scope: Scope, path: tuple, doc: Document) -> int:
        if "repeat" not in node:
            return 1
        loc, where = doc.loc(path + ("repeat",)), format_path(path)
        times = node["repeat"]["times"] if isinstance(node["repeat"], dict) else node["repeat"]
        if isinstance(node["repeat"], dict) and node["repeat"].get("index", "i") in RESERVED - {"i"}:
            raise SchemaError(f"repeat: index: '{node['repeat']['index']}' is a reserved name",
                              doc.loc(path + ("repeat", "index")), where + ".repeat.index")  # fmt: skip
        repeat = resolve(times, scope, loc, where + ".repeat")
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 0:
            raise ExprError(f"repeat: must be a non-negative integer, got {repeat!r}", loc, where)
        self._count(repeat, loc, where)
        return repeat

    def _left_out(self, name: str, node: dict, inputs: tuple, env: _Env, loc, where):
        """What a node left out by `if: false` or `repeat: 0` stands for: its first input
        (so an optional residual `add: {in: [body, input], if: ...}` leaves `body`)."""
        first = node.get("in")
        first = first[0] if isinstance(first, list) and first else first
        if isinstance(first, str) and env is not None:  # to name a loop of left-out nodes
            env.skips[name] = (parse_ref(first)[0], loc, where)
        if env is not None:
            env.left_out.add(name)
        return inputs[0] if inputs else _Skipped(name, inputs, loc, where)

    def _takes_no_input(self, node: dict) -> bool:
        op = node.get("op")
        return isinstance(op, str) and not has_expr(op) and op in self.registry and self.registry.get(op).min_inputs == 0

    def _instance(self, node, full, inputs, scope, path, doc, env):
        """One op node or block instance; returns its output (Ref or tuple of Refs)."""
        loc, where = doc.loc(path), format_path(path)
        for k, value in enumerate(inputs):
            if isinstance(value, tuple):
                raise _bundle_error(f"input {k} comes from", value, loc, where)
            if isinstance(value, _Skipped):
                self._final(value, env)  # raises: a left-out node without an input
        if "block" in node:
            return self._block(node, full, inputs, scope, path, doc)
        if "nodes" in node:
            return self._inline(node, full, inputs, scope, path, doc)
        op_name = resolve(node["op"], scope, doc.loc(path + ("op",)), where + ".op")
        if not isinstance(op_name, str) or op_name not in self.registry:
            raise SchemaError(f"unknown op {op_name!r}", doc.loc(path + ("op",)), where + ".op",
                              did_you_mean(str(op_name), self.registry.names()))  # fmt: skip
        op = self.registry.get(op_name)
        if op.min_inputs == 0 and "in" not in node:
            inputs = ()
        args = {}
        for key, value in node.items():
            if key not in NODE_KEYS:
                args[key] = resolve(value, scope, doc.loc(path + (key,)), f"{where}.{key}")
        for key, message, hint in check_args(op, args, literal_only=False):
            p = path + ((key,) if key else ())
            self.problems.append(SchemaError(message, doc.loc(p), format_path(p), hint).diagnostics[0])
        call = resolve(node.get("call") or {}, scope, doc.loc(path + ("call",)), where + ".call")
        refs = tuple(inputs)
        problem = op.check_arity(len(refs))
        if problem:
            raise GraphError(problem, doc.loc(path + ("in",)) if "in" in node else loc, where,
                             "list them with in: [a, b]" if len(refs) < op.min_inputs else "")  # fmt: skip
        if any(not isinstance(r, Ref) for r in refs):
            self.unresolved.append(len(self.nodes))  # names defined later in a scope
        tie = tuple((node.get("tie") or {}).items())
        self.nodes.append(NodeSpec(full, op_name, refs, args, call, loc, self._mark(where), tie))
        return Ref(full)

    def _block(self, node, full, inputs, scope, path, doc, into: _Env | None = None):
        """One block instance. An error inside its definition names the instance too
        (`blocks.conv_bn.nodes.conv (in AuxLogits.conv1)`): the definition's line alone
        does not say which of its uses failed."""
        self.instances.append(full.rstrip("."))
        try:
            return self._block_instance(node, full, inputs, scope, path, doc, into)
        except SpecError as err:
            raise type(err)(diagnostics=[replace(d, path=self._mark(d.path)) for d in err.diagnostics]) from None
        finally:
            self.instances.pop()

    def _mark(self, where: str) -> str:
        """`where` (a path inside a block definition) with the instance it was made for."""
        instance = self.instances[-1] if self.instances else ""
        if not instance or not where.startswith("blocks.") or " (in " in where:
            return where
        return f"{where} (in {instance if len(instance) <= 80 else '...' + instance[-77:]})"

    def _block_instance(self, node, full, inputs, scope, path, doc, into: _Env | None = None):
        loc, where = doc.loc(path), format_path(path)
        name = node["block"]
        if has_expr(name):  # chosen by an expression: check what it chose
            bloc = doc.loc(path + ("block",))
            name = resolve(name, scope, bloc, where + ".block")
            if not isinstance(name, str) or name not in self.blocks:
                raise SchemaError(f"block: {name!r} is not a block", bloc, where + ".block",
                                  did_you_mean(str(name), self.blocks) or _names_hint("blocks", self.blocks))  # fmt: skip
            params = self.blocks[name][0].get("params") or {}
            for key in node:
                if key not in NODE_KEYS and key not in params:
                    raise SchemaError(f"block '{name}' has no parameter '{key}'", doc.loc(path + (key,)),
                                      f"{where}.{key}", did_you_mean(key, params))  # fmt: skip
        body, bdoc, bpath = self.blocks[name]
        if name in self.block_stack or len(self.block_stack) >= LIMITS["max_block_depth"]:
            chain = " -> ".join(self.block_stack + [name])
            raise GraphError(f"block '{name}' contains itself ({chain})", loc, where)
        names = body["inputs"] if "inputs" in body else ["input"]
        if not names and "in" not in node:
            inputs = ()  # a block that reads nothing is not chained to the node before
        if len(inputs) != len(names):
            raise GraphError(f"block '{name}' takes {len(names)} input(s) ({', '.join(names)}), "
                             f"got {len(inputs)}", doc.loc(path + ("in",)), where)  # fmt: skip
        given = _Env(dict(zip(names, inputs, strict=True)), Scope({}), full + ".")  # what shape() sees
        shape = self._shape_fn(given, f"an input of the block ({', '.join(names)})")
        params = self._block_params(node, body, name, scope, path, doc, shape)
        inner = _Env(dict(zip(names, inputs, strict=True)), Scope({**self.variables, **params}), full + ".")
        if into is not None:  # spliced: its nodes are numbered in the enclosing list
            inner = into
            inner.refs.update(zip(names, inputs, strict=True))
            inner.given = frozenset(names)
            inner.scope = Scope({**self.variables, **params})
            if not isinstance(body["nodes"], list):
                raise SchemaError(f"splice: block '{name}' must write its nodes as a list",
                                  doc.loc(path + ("splice",)), format_path(path))  # fmt: skip
        inner.scope = self._let(body, bdoc, bpath, inner.scope, params, shape)
        inner.prev = inputs[0] if inputs else None
        self.block_stack.append(name)
        self._expand_nodes(body["nodes"], bdoc, bpath + ("nodes",), inner)
        self.block_stack.pop()
        spec = body.get("outputs")
        oloc = bdoc.loc(bpath + ("outputs",))
        if spec is None:
            out = inner.prev
        elif isinstance(spec, str):
            out = self._lookup(spec, inner, oloc, format_path(bpath + ("outputs",)))
        else:
            out = tuple(self._lookup(s, inner, oloc, format_path(bpath + ("outputs",))) for s in spec)
        self._finish_scope(inner)
        if isinstance(out, tuple):
            return tuple(self._final(o, inner) for o in out)
        return self._final(out, inner)

    def _inline(self, node, full, inputs, scope, path, doc, into: _Env | None = None):
        """Inline `nodes:` — a submodule container that sees the enclosing variables."""
        if len(inputs) > 1:
            raise GraphError("inline nodes: take one input (named input); define a block for several",
                             doc.loc(path + ("in",)), format_path(path))  # fmt: skip
        inner = _Env({"input": inputs[0]} if inputs else {}, scope.child(), full + ".")
        if into is not None:  # spliced: its nodes are numbered in the enclosing list
            if not isinstance(node["nodes"], list):
                raise SchemaError("splice: the inline nodes: must be a list", doc.loc(path + ("splice",)),
                                  format_path(path))  # fmt: skip
            inner = into
            inner.refs.update({"input": inputs[0]} if inputs else {})
            inner.given = frozenset({"input"})
        inner.prev = inputs[0] if inputs else None
        self._expand_nodes(node["nodes"], doc, path + ("nodes",), inner)
        out = inner.prev
        self._finish_scope(inner)
        return self._final(out, inner)

    def _let(self, body: dict, bdoc: Document, bpath: tuple, scope: Scope, params: dict, shape) -> Scope:
        """A block's `let:` names, evaluated in order for each instance, after its
        parameters; `shape()` may name the block's inputs (`H: "${shape(input)[1]}"`)."""
        for key, value in (body.get("let") or {}).items():
            kpath = bpath + ("let", key)
            if key in RESERVED or key in params:
                what = "a reserved name" if key in RESERVED else "a parameter of the block"
                raise SchemaError(f"let: '{key}' is {what}", bdoc.loc(kpath), format_path(kpath), "rename it")
            here = scope.child()
            here.shape_of = shape
            scope = scope.child(**{key: resolve(value, here, bdoc.loc(kpath), format_path(kpath))})
        return scope

    def _block_params(self, node, body, name, scope, path, doc, shape=None) -> dict:
        decls = body.get("params") or {}
        values = {}
        for key, decl in decls.items():
            if key in RESERVED:
                raise SchemaError(f"'{key}' is a reserved name", doc.loc(path), format_path(path))
            if key in node:
                kpath = path + (key,)
                value = resolve(node[key], scope, doc.loc(kpath), format_path(kpath))
            elif param_decl(decl).required:
                raise SchemaError(f"block '{name}' needs parameter '{key}'", doc.loc(path), format_path(path))
            else:
                default = param_decl(decl).default  # may use shape() of the block's inputs
                value = resolve(default, Scope({**self.variables, **values}, shape), doc.loc(path), format_path(path))
            _check_param_type(key, param_decl(decl).type, value, doc.loc(path + (key,)), format_path(path + (key,)))
            values[key] = value
        return values

    # ---- references --------------------------------------------------------------
    def _inputs_of(self, node: dict, env: _Env, loc, where) -> tuple:
        if "in" not in node:
            return () if env.prev is None else (env.prev,)
        items = node["in"] if isinstance(node["in"], list) else [node["in"]]
        return tuple(self._lookup(t, env, loc, where + ".in") for t in items)

    def _lookup(self, text: str, env: _Env, loc, where):
        try:
            name, index = parse_ref(text)
        except ValueError:
            raise GraphError(f"'{text}' is not a node reference", loc, where, "write name or name[0]") from None
        if name not in env.refs:
            pending = _Pending(env, name, loc, where)
            env.pending.append(pending)
            env.refs.setdefault(name, pending)
            target = pending
        else:
            target = env.refs[name]
        if not index:
            return target
        out = _index(target, index, text, loc, where)
        if name in env.left_out and isinstance(out, Ref):  # errors say what was written
            out = replace(out, written=f"'{text}' ('{name}' is left out and passes '{target}' through)")
        return out

    def _finish_scope(self, env: _Env) -> None:
        """Resolve names used before their definition; unknown ones are errors."""
        for p in env.pending:
            if p.name in env.skips:
                self._skip_cycle(p.name, env)
            missing = _undefined(p.name, env)
            if missing is not None:
                where = p if missing == p.name else env.refs[missing]
                known = [k for k, v in env.refs.items() if not isinstance(v, _Pending)]
                raise GraphError(f"unknown input '{missing}'", where.loc, where.path,
                                 did_you_mean(missing, known) or _names_hint("names", known))  # fmt: skip
        if not env.pending:
            return
        still = []
        for k in self.unresolved:
            node = self.nodes[k]
            fixed = tuple(self._final(r, env) for r in node.inputs)
            for r in fixed:
                if isinstance(r, tuple):
                    raise _bundle_error("an input comes from", r, node.loc, node.path)
            self.nodes[k] = NodeSpec(node.name, node.op, fixed, node.args, node.call, node.loc, node.path, node.tie)
            if any(not isinstance(r, Ref) for r in fixed):
                still.append(k)
        self.unresolved = still

    def _skip_cycle(self, start: str, env: _Env) -> None:
        """Left-out nodes that pass each other's inputs through in a loop: a cycle."""
        chain = [start]
        while chain[-1] in env.skips and env.skips[chain[-1]][0] not in chain:
            chain.append(env.skips[chain[-1]][0])
        nxt = env.skips.get(chain[-1], (None,))[0]
        if nxt in chain:
            cycle = chain[chain.index(nxt):]
            first = min(cycle, key=list(env.skips).index)
            k = cycle.index(first)
            names = cycle[k:] + cycle[:k] + [first]
            _, loc, path = env.skips[first]
            raise GraphError(f"cycle: {' -> '.join(names)}", loc, path,
                             "a node cannot depend on its own output")  # fmt: skip

    def _final(self, value, env: _Env, depth: int = 0):
        if depth > 1000:
            raise GraphError("skipped nodes pass their inputs to each other in a loop", None)
        if isinstance(value, _Indexed):
            base = self._final(value.base, env, depth + 1)
            return _index(base, value.index, value.text, value.loc, value.path)
        if isinstance(value, _Pending):
            target = value.scope.refs[value.name]
            return value if target is value else self._final(target, env, depth + 1)
        if isinstance(value, _Skipped):
            raise GraphError(f"'{value.name}' is left out (if: false or repeat: 0) and has no "
                             "input to pass through", value.loc, value.path)  # fmt: skip
        return value

    def _shape_fn(self, env: _Env, where: str = "defined before this node"):
        def shape(name: str) -> list:
            if self.shape_of is None:
                raise ExprError("shape() needs the compile pipeline (not available here)")
            target = env.refs.get(name)
            if target is None or isinstance(target, (_Pending, _Skipped, _Indexed)):
                raise ExprError(f"shape({name}): '{name}' is not {where}",
                                hint=did_you_mean(name, env.refs))  # fmt: skip
            if isinstance(target, tuple):
                raise ExprError(f"shape({name}): '{name}' has several outputs; index one first")
            return self.shape_of(target, self.nodes, self.inputs)

        return shape


def _copy_scope(node: dict, scope: Scope, k: int) -> Scope:
    """The scope of copy k of a node: its loop index bound, as `i` or as the name that
    `repeat: {times: n, index: name}` gives it (so a repeat inside sees an outer one's)."""
    if "repeat" not in node:
        return scope
    spec = node["repeat"]
    return scope.child(**{spec.get("index", "i") if isinstance(spec, dict) else "i": k})


def _bundle_error(subject: str, bundle: tuple, loc, where) -> GraphError:
    """A block's several outputs used where one tensor is expected."""
    return GraphError(f"{subject} a block with {len(bundle)} outputs", loc, where,
                      "pick one with name[0], name[1], ...")  # fmt: skip


def _undefined(name: str, env: _Env) -> str | None:
    """The name that is never defined behind `name` (through left-out nodes), or None."""
    seen = set()
    value = env.refs.get(name)
    while isinstance(value, (_Pending, _Indexed)) and name not in seen:
        seen.add(name)
        while isinstance(value, _Indexed):
            value = value.base
        if not isinstance(value, _Pending):
            return None
        if value.name == name and env.refs.get(name) is value:
            return name
        name, value = value.name, env.refs.get(value.name)
    return None


def init_specs(raw: Any, folder: str, loc_of: Callable) -> tuple[InitSpec, ...]:
    """The items of an `init:` value (a mapping or a list of them), files resolved against
    `folder`; `loc_of(path)` says where a path such as ("init", 0) was written.

        >>> init_specs({"file": "r18.pt", "exclude": ["fc"]}, "/w", lambda p: None)[0].path
        '/w/r18.pt'
    """
    items = raw if isinstance(raw, list) else [raw] if raw else []
    out = []
    for k, item in enumerate(items):
        path = ("init", k) if isinstance(raw, list) else ("init",)
        loc, where = loc_of(path), format_path(path)
        if "weights" in item and "torchvision" not in item:
            raise SchemaError("weights: names a torchvision model's weights; it goes with torchvision:", loc, where)
        if ("file" in item) == ("torchvision" in item):
            raise SchemaError("file: and torchvision: both name the weights; keep one" if "file" in item else
                              "missing file: (a weights file) or torchvision: (a model's pretrained weights)",
                              loc, where)  # fmt: skip
        file = item.get("file", "")
        out.append(InitSpec(file, os.path.join(folder, file) if file else "", item.get("into", ""),
                            item.get("from", ""), tuple(item.get("exclude", ())), loc, where,
                            item.get("torchvision", ""), item.get("weights", "")))  # fmt: skip
    return tuple(out)


def frozen_paths(patterns: tuple[FreezePattern, ...], names: list[str]) -> list[str]:
    """The node and module paths the `freeze:` patterns match, as fnmatch globs over every
    dotted prefix of the node names (`layer*` is layer1 ... layer4, everything in them
    with it; `conv1` is the top-level conv1 alone, `*.conv1` every other). A pattern that
    matches nothing is an error, with the nearest name."""
    paths = list(dict.fromkeys(".".join(parts[:k]) for parts in (n.split(".") for n in names)
                               for k in range(1, len(parts) + 1)))  # fmt: skip
    out: list[str] = []
    for p in patterns:
        hits = [q for q in paths if fnmatch.fnmatchcase(q, p.pattern)]
        if not hits:
            top = list(dict.fromkeys(n.split(".")[0] for n in names))
            hint = (did_you_mean(p.pattern, top) or did_you_mean(p.pattern, paths)
                    or "its top-level nodes: " + ", ".join(top[:12]) + (" ..." if len(top) > 12 else ""))  # fmt: skip
            raise SpecError(f"'{p.pattern}' matches no node or module path of the model", p.loc, p.where,
                            hint)  # fmt: skip
        out += hits
    return out


def outermost(prefixes: list[str]) -> tuple[str, ...]:
    """The prefixes not inside another one (a checkpointed block inside a checkpointed
    block is recomputed with it)."""
    kept = set(prefixes)

    def inside(p: str) -> bool:  # a dotted ancestor of p is kept: O(depth), not O(n)
        parts = p.split(".")
        return any(".".join(parts[:i]) in kept for i in range(1, len(parts)))

    return tuple(p for p in dict.fromkeys(prefixes) if not inside(p))


@lru_cache(maxsize=1)
def _module_attributes() -> frozenset:
    """Names a submodule cannot take: every attribute of a GraphModule, its class's and
    its instance's alike (`forward`, `training`, `_modules`, `meta`, `__dict__`), computed
    from a real one so a new torch's additions are covered too."""
    import torch.fx

    module = torch.fx.GraphModule(torch.nn.Module(), torch.fx.Graph())
    return frozenset(dir(module)) | frozenset(vars(module))


@dataclass(frozen=True)
class _Indexed:
    base: Any
    index: tuple
    text: str
    loc: Any
    path: str


def _index(target, index: tuple, text: str, loc, where):
    if isinstance(target, _Indexed):  # an index into a name not resolved yet
        return _Indexed(target.base, target.index + index, text, loc, where)
    if isinstance(target, (_Pending, _Skipped)):
        return _Indexed(target, index, text, loc, where)
    if isinstance(target, tuple):  # a block with several outputs
        i, rest = index[0], index[1:]
        if not -len(target) <= i < len(target):
            raise GraphError(f"'{text}': index {i} out of range ({len(target)} outputs)", loc, where)
        return _index(target[i], rest, text, loc, where) if rest else target[i]
    return Ref(target.node, target.index + index)


def _check_param_type(key, tname, value, loc, where) -> None:
    if tname is None or tname == "any":
        return
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "list": isinstance(value, list),
        "dict": isinstance(value, dict),
    }[tname]
    if not ok:
        raise SchemaError(f"parameter '{key}' expects {tname}, got {value!r}", loc, where)


def _names_hint(what: str, names) -> str:
    names = list(names)
    if not names:
        return f"there are no {what} here"
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f"known {what}: {shown}"


def _stem(file: str) -> str:
    import os

    return os.path.splitext(os.path.basename(file))[0] or "model"


def parse_override(text: str) -> Any:
    """A command-line value, read with the same safe rules as a spec file."""
    return load_document(text.encode("utf-8"), "<command line>").data
