"""Writing the spec's YAML text: block parameters decided slot by slot, then the inputs, nodes,
outputs and blocks."""

from __future__ import annotations

import re
from collections import Counter

from ..registry import REGISTRY
from .blocks import _Body, _body_of, _Entry, _merge
from .common import MISSING, _PerI, _same, snake_case
from .layer_args import _plain
from .tree import _RESERVED_NAMES, _ancestors, _Scope, _Tree
from .yaml_text import (
    _NO_DEFAULT,
    _NODE_KEYS,
    _as_value,
    _flow,
    _hashable,
    _is_per_i,
    _over_i,
    _param_default,
    _scalar,
    _type_name,
    _unique,
)


# ---- writing --------------------------------------------------------------------------------------
class _Writer:
    def __init__(self, tree: _Tree, decls, name: str, header: str, keep_inferred: bool = False):
        self.tree = tree
        self.decls = decls
        self.name = name
        self.header = header
        self.keep = keep_inferred
        self.blocks: dict[str, tuple] = {}  # id -> (template body, params decl)
        self.marks: dict = {}  # (id(entry), key) -> ("omit" | "literal" | "param", value)
        self._build()

    def _build(self):
        tree = self.tree
        scopes = [
            s for s in tree.scopes.values() if s.parent is not None and not s.inline()
        ]
        height: dict = {}

        def h(scope) -> int:
            if id(scope) in height:
                return height[id(scope)]
            kids = [c for c in scope.children if isinstance(c, _Scope)]
            value = 1 + max((h(c) for c in kids), default=0)
            height[id(scope)] = value
            return value

        def level(scope) -> int:  # a class nested in itself: one group per level
            return sum(1 for a in _ancestors(scope.parent) if type(a.module) is type(scope.module))

        by_class: dict = {}
        for s in scopes:
            by_class.setdefault((type(s.module), level(s)), []).append(s)
        order = sorted(by_class, key=lambda key: max(h(s) for s in by_class[key]))
        used_ids: set = set()
        place = {path: k for k, path in enumerate(tree.scopes)}  # forward order
        for cls in order:
            groups: list = []  # [members, bodies, their merged template]
            for s in sorted(by_class[cls], key=lambda s: place[s.path]):
                body = _body_of(tree, s)
                for group in groups:
                    merged = _merge(group[1] + [body])
                    if merged is not None:
                        group[0].append(s)
                        group[1].append(body)
                        group[2] = merged
                        break
                else:
                    groups.append([[s], [body], _merge([body])])
            base = snake_case(cls[0].__name__)
            for members, _, template in groups:
                bid = _unique(base, used_ids)
                params = self._params(template, len(members))
                for k, s in enumerate(members):
                    s.block = bid
                    s.params = {
                        p: _as_value(d if vals[k] is MISSING else vals[k])
                        for p, (vals, d) in params.items()
                    }
                self.blocks[bid] = (template, params)
        root_body = _body_of(tree, tree.root)
        self.root = _merge([root_body])
        self.root_params = self._params(self.root, 1)

    def _params(self, t: _Body, members: int) -> dict:
        """Decide, slot by slot, what is literal and what a block parameter; returns
        {param: (values per member, default or _NO_DEFAULT)} and marks the slots."""
        slots = []  # (entry, key, values)

        def walk(body: _Body, outer: list):
            for e in body.entries:
                # left out where its container is present: an if: (inside a left-out
                # container it needs none)
                if any(o and not p for o, p in zip(outer, e.present, strict=True)):
                    slots.append(
                        (
                            e,
                            "__if__",
                            [
                                bool(p) if o else MISSING
                                for o, p in zip(outer, e.present, strict=True)
                            ],
                        )
                    )
                if (
                    isinstance(e.repeat, list)
                    and len(set(map(_hashable, [r for r in e.repeat if r is not MISSING]))) > 1
                ):
                    slots.append((e, "__repeat__", e.repeat))
                for key, values in e.slots.items():
                    slots.append((e, key, values))
                if e.body is not None:
                    walk(e.body, e.present)

        walk(t, [True] * members)
        params: dict = {}
        for e, key, values in slots:
            defined = [v for v in values if v is not MISSING]
            if key not in ("__if__", "__repeat__"):
                default = self._default_of(e, key)
                if all(_same(v, default) for v in defined):
                    self.marks[(id(e), key)] = ("omit", None)
                    continue
                if e.kind == "op" and key in e.droppable and not self.keep:
                    self.marks[(id(e), key)] = ("omit", None)
                    continue
                if members == 1 or all(_same(v, defined[0]) for v in defined):
                    self.marks[(id(e), key)] = ("literal", defined[0])
                    continue
            pname = self._param_for(params, e, key, values)
            self.marks[(id(e), key)] = ("param", pname)
        out = {}
        for pname, values in params.items():
            defined = [v for v in values if v is not MISSING]
            common, count = Counter(map(_hashable, defined)).most_common(1)[0]
            default = next(v for v in defined if _hashable(v) == common)
            has_default = 2 * count >= members or any(v is MISSING for v in values)
            out[pname] = (values, default if has_default else _NO_DEFAULT)
        return out

    def _param_for(self, params: dict, e: _Entry, key: str, values: list) -> str:
        for pname, vals in params.items():
            if all(
                a is MISSING or b is MISSING or _same(a, b)
                for a, b in zip(vals, values, strict=True)
            ):
                # also the param's type must agree
                merged = [b if a is MISSING else a for a, b in zip(vals, values, strict=True)]
                params[pname] = merged
                return pname
        if key == "__if__":
            base = f"use_{e.name}"
        elif key == "__repeat__":
            base = f"{e.name}_depth"
        else:
            base = key
        base = re.sub(r"\W", "_", base)
        if not base.isidentifier() or base[0].isdigit():
            base = "p_" + base
        name = base
        if name in params or name in _RESERVED_NAMES or name in _NODE_KEYS:
            name = re.sub(r"\W", "_", f"{e.name}_{base}")
        k = 2
        while (
            name in params
            or name in _RESERVED_NAMES
            or name in _NODE_KEYS
            or not name.isidentifier()
        ):
            name = f"{base}_{k}"
            k += 1
        params[name] = list(values)
        return name

    def _default_of(self, e: _Entry, key: str):
        if e.kind == "op":
            argdef = REGISTRY.get(e.what).args.get(key)
            return (
                _NO_DEFAULT
                if argdef is None or argdef.required or argdef.inferred and argdef.default is None
                else _plain(argdef.default, argdef.schema)
            )
        if e.kind == "block":
            _, params = self.blocks[e.what]
            p = params.get(key)
            return _NO_DEFAULT if p is None else p[1]
        return _NO_DEFAULT

    # text -------------------------------------------------------------------------------
    def text(self) -> str:
        self.vars: dict = {}
        body = self._text_body()
        lines = []
        if self.header:
            lines += [f"# {line}" if line else "#" for line in self.header.splitlines()]
        lines += ["yamlnet: 1", f"name: {_scalar(self.name)}"]
        if self.vars:
            lines.append("vars:")
            lines += [f"  {k}: {_flow(v)}" for k, v in self.vars.items()]
        return "\n".join(lines + body) + "\n"

    def _text_body(self) -> list[str]:
        lines = ["inputs:"]
        for n, shape, dtype in self.decls:
            n = self.tree.input_names[n]
            if dtype == "float32":
                lines.append(f"  {n}: {_flow(shape)}")
            else:
                lines.append(f"  {n}: {{shape: {_flow(shape)}, dtype: {dtype}}}")
        lines.append("nodes:")
        lines += self._body_lines(self.root, 2, self.root.inputs[0] if self.root.inputs else None)
        lines += self._outputs_lines()
        if self.blocks:
            lines += ["", "blocks:"]
            for bid, (template, params) in self.blocks.items():
                lines.append(f"  {bid}:")
                if params:
                    decl = {
                        p: (_type_name(v) if d is _NO_DEFAULT else _param_default(d))
                        for p, (v, d) in params.items()
                    }
                    lines.append(f"    params: {_flow(decl)}")
                if template.inputs != ["input"]:
                    lines.append(f"    inputs: {_flow(template.inputs)}")
                lines.append("    nodes:")
                lines += self._body_lines(
                    template, 6, template.inputs[0] if template.inputs else None
                )
                last = template.entries[-1].name if template.entries else None
                if not (len(template.outputs) == 1 and template.outputs[0] == last):
                    out = template.outputs[0] if len(template.outputs) == 1 else template.outputs
                    lines.append(f"    outputs: {_flow(out)}")
        return lines

    def _outputs_lines(self) -> list[str]:
        """`outputs:`, left out where it is the last node alone, and `train_outputs:`."""
        traced = self.tree.traced
        pairs = list(zip([n for n, _ in traced.outputs], self.root.outputs, strict=True))
        cut = len(pairs) - traced.n_train
        outs, train = pairs[:cut], pairs[cut:]
        last = self.root.entries[-1].name if self.root.entries else None
        lines = []
        if len(outs) == 1 and (not train or outs[0][0] == "output"):
            if train or outs[0][1] != last:
                lines.append(f"outputs: {_scalar(outs[0][1])}")
        else:
            lines.append("outputs: {" + ", ".join(f"{n}: {_scalar(r)}" for n, r in outs) + "}")
        if train:
            lines.append("train_outputs: {" + ", ".join(f"{n}: {_scalar(r)}" for n, r in train) + "}")
        return lines

    def _body_lines(self, body: _Body, indent: int, first_input) -> list[str]:
        pad = " " * indent
        rows = []
        prev = first_input
        for e in body.entries:
            rows.append((e.name, self._node(e, prev)))
            prev = e.name
        # a list numbers its kept nodes like nn.Sequential, a repeat taking a number per
        # copy; a body with a repeat or an if: is written as a mapping ("1": {repeat: 3})
        listed = [e.name for e in body.entries] == [str(k) for k in range(len(body.entries))] and not any(
            "repeat" in node or "if" in node for _, node in rows
        )
        if any(e.named for e in body.entries):  # name: with i is written in a list
            listed = True
            rows = [(name, {"name": name, **node}) if e.named else (name, node)
                    for (name, node), e in zip(rows, body.entries, strict=True)]  # fmt: skip
        width = max((len(_scalar(n)) for n, _ in rows), default=0) + 1
        out = []
        for (name, node), e in zip(rows, body.entries, strict=True):
            if e.body is None:
                text = _flow(node)
                out.append(
                    f"{pad}- {text}"
                    if listed
                    else f"{pad}{(_scalar(name) + ':').ljust(width)} {text}"
                )
                continue
            head = f"{pad}- " if listed else f"{pad}{_scalar(name)}:"
            inner = " " * (indent + 2)
            keys = [(k, v) for k, v in node.items() if k != "nodes"]
            if listed:
                first = True
                for k, v in keys:
                    out.append(f"{head if first else inner}{k}: {_flow(v)}")
                    first = False
                out.append(f"{head if first else inner}nodes:")
            else:
                out.append(head)
                for k, v in keys:
                    out.append(f"{inner}{k}: {_flow(v)}")
                out.append(f"{inner}nodes:")
            out += self._body_lines(e.body, indent + 4, "input")
        return out

    def _node(self, e: _Entry, prev) -> dict:
        node: dict = {}
        if e.kind == "op":
            node["op"] = e.what
        elif e.kind == "block":
            node["block"] = e.what
        if e.refs and e.refs != ([prev] if prev is not None else []):
            node["in"] = e.refs[0] if len(e.refs) == 1 else list(e.refs)
        if e.repeat is not None:
            reps = e.repeat if isinstance(e.repeat, list) else [e.repeat]
            mark = self.marks.get((id(e), "__repeat__"))
            node["repeat"] = (
                f"${{{mark[1]}}}"
                if mark and mark[0] == "param"
                else next(r for r in reps if r is not MISSING)
            )
        mark = self.marks.get((id(e), "__if__"))
        if mark and mark[0] == "param":
            node["if"] = f"${{{mark[1]}}}"
        for key in e.slots:
            kind, value = self.marks.get((id(e), key), ("omit", None))
            if kind == "omit":
                continue
            if kind == "param":
                reps = e.repeat is not None
                node[key] = (
                    f"${{{value}[i]}}" if reps and _is_per_i(e.slots[key]) else f"${{{value}}}"
                )
            elif isinstance(value, _PerI):
                node[key] = _over_i(value)
                if len(node[key]) > 380 if isinstance(node[key], str) else False:
                    # past the length of one expression: a variable indexed by i
                    var = _unique(re.sub(r"\W", "_", f"{e.name}_{key}").lstrip("_0123456789") or "values",
                                  set(self.vars) | _RESERVED_NAMES)  # fmt: skip
                    self.vars[var] = list(value)
                    node[key] = f"${{{var}[i]}}"
            else:
                node[key] = value
        if e.call:
            node["call"] = dict(e.call)
        if e.kind == "inline":
            node["nodes"] = None
        return node
