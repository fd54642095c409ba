"""Cutting the traced op nodes back into the module tree: each submodule a scope, with the
values that cross its border as its inputs and outputs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..schema import NAME_PATTERN, NAME_RULE
from .common import ImportFailure, _few, _is_container
from .trace import _Item, _Traced, _Val


# ---- the module tree ------------------------------------------------------------------------
@dataclass
class _Scope:
    """One module instance: its items and child scopes, in forward order."""

    path: str
    module: Any
    parent: _Scope | None
    children: list = field(default_factory=list)  # _Item | _Scope
    inputs: list = field(default_factory=list)  # _Val keys crossing in, in first-use order
    outputs: list = field(default_factory=list)  # _Val keys crossing out
    names: set = field(default_factory=set)
    block: str = ""  # block id, once its class is merged
    params: dict = field(default_factory=dict)  # this instance's parameter values

    @property
    def local(self) -> str:
        return self.path.rpartition(".")[2]

    def depth(self) -> int:
        return 0 if self.parent is None else 1 + self.parent.depth()

    def inline(self) -> bool:
        """Whether it is written as inline `nodes:`: a container with one input and one
        output. Other containers (deeplab's parallel branches in a ModuleList) are blocks."""
        return _is_container(self.module) and len(self.inputs) <= 1 and len(self.outputs) == 1


class _Tree:
    """Items cut back into the module tree; values crossing scopes become their
    inputs and outputs."""

    def __init__(self, traced: _Traced):
        self.traced = traced
        module = traced.module
        self.root = _Scope("", module, None)
        self.root.names = {n for n, _ in module.named_children()}
        self.root.names |= {n for n, _ in module.named_parameters(recurse=False)}
        self.root.names |= {n for n, _ in module.named_buffers(recurse=False)}
        self.scopes = {"": self.root}
        _refuse_names(module)
        # the spec's input names: forward's, unless a layer of the same name needs it
        self.input_names = {}
        for n in traced.names:
            spec_name = n
            while spec_name in self.root.names or spec_name in _RESERVED_NAMES:
                spec_name += "_in"
            self.input_names[n] = spec_name
            self.root.names.add(spec_name)
        self.closed: set = set()
        self.producer: dict = {}  # fx node -> scope
        open_chain = [self.root]
        used_leaf: dict = {}
        for item in traced.items:
            chain = _prefixes(item.owner)
            # close scopes not on this item's chain, open the new ones
            k = 1
            while k < len(open_chain) and k - 1 < len(chain) and open_chain[k].path == chain[k - 1]:
                k += 1
            for s in open_chain[k:]:
                self.closed.add(s.path)
            open_chain = open_chain[:k]
            for path in chain[k - 1 :]:
                if path in self.closed:
                    m = traced.modules[path]
                    what = f"'{path}' ({type(m).__name__})"
                    if _is_container(m):
                        raise ImportFailure(f"the layers of {what} are used with other nodes between them; "
                                            "a spec keeps a container's layers together")  # fmt: skip
                    raise ImportFailure(f"{what} is called twice, or its layers are used between other "
                                        "modules' layers; a spec gives each module one place")  # fmt: skip
                parent = open_chain[-1]
                scope = _Scope(path, traced.modules[path], parent)
                scope.names = {n for n, _ in scope.module.named_children()}
                scope.names |= {n for n, _ in scope.module.named_parameters(recurse=False)}
                scope.names |= {n for n, _ in scope.module.named_buffers(recurse=False)}
                parent.children.append(scope)
                self.scopes[path] = scope
                open_chain.append(scope)
            scope = open_chain[-1]
            item.name = self._name(item, scope, used_leaf)
            scope.children.append(item)
            self.producer[item.fx] = scope
        self._unused()
        self._wire()
        for scope in self.scopes.values():
            if scope.parent is not None and not scope.inputs:
                raise ImportFailure(f"'{scope.path}' ({type(scope.module).__name__}) takes no tensor from "
                                    "forward; a spec's blocks take at least one input")  # fmt: skip

    def _name(self, item: _Item, scope: _Scope, used_leaf: dict) -> str:
        if item.fx.op in ("call_module", "get_attr"):
            key = item.fx.target
            if key in used_leaf:
                m = self.traced.modules.get(key)
                if m is None or any(True for _ in m.parameters()) or any(True for _ in m.buffers()):
                    raise ImportFailure(
                        f"'{key}' is used twice (shared weights); a spec cannot share a layer yet"
                    )
                return self._fresh(item.base, scope)
            used_leaf[key] = item
            scope.names.add(item.base)
            return item.base
        return self._fresh(item.base, scope)

    @staticmethod
    def _fresh(base: str, scope: _Scope) -> str:
        from ..expand import _module_attributes

        name, k = base, 1
        while name in scope.names or name in _module_attributes() or name in _RESERVED_NAMES:
            name = f"{base}_{k}"
            k += 1
        scope.names.add(name)
        return name

    def _unused(self):
        used = {
            item.fx.target
            for item in self.traced.items
            if item.fx.op in ("call_module", "get_attr")
        }
        lost = []
        for name, _ in list(self.traced.module.named_parameters()) + list(
            self.traced.module.named_buffers()
        ):
            if not any(p in used for p in _prefixes(name)):
                lost.append(name)
        if lost:
            raise ImportFailure(f"forward never uses {_few(lost)}; the spec would lose those weights",
                                hint="import a module whose forward uses all its layers")  # fmt: skip

    def _wire(self):
        """Inputs and outputs of every scope: the values that cross its border."""

        def cross(val: _Val, user: _Scope):
            src = self.producer.get(val.node, self.root)
            up_src, up_user = _ancestors(src), _ancestors(user)
            common = next(s for s in up_src if s in up_user)
            for s in up_src:
                if s is common:
                    break
                if val.key() not in s.outputs:
                    s.outputs.append(val.key())
            for s in up_user:
                if s is common:
                    break
                if val.key() not in s.inputs:
                    s.inputs.append(val.key())

        for item in self.traced.items:
            scope = self.producer[item.fx]
            for v in item.inputs:
                cross(v, scope)
        for _, v in self.traced.outputs:
            cross(v, self.root)


def _refuse_names(module) -> None:
    """Submodule and tensor names a spec cannot write (`block1-0` it can, `a b` not)."""
    names = [p for p, _ in module.named_modules() if p]
    names += [p for p, _ in module.named_parameters()] + [p for p, _ in module.named_buffers()]
    for path in names:
        for part in path.split("."):
            if not re.fullmatch(NAME_PATTERN, part):
                raise ImportFailure(f"'{path}' has a name a spec cannot use ('{part}': {NAME_RULE})",
                                    hint="rename it in the Python class")  # fmt: skip


_RESERVED_NAMES = {"i", "shape", "input", "true", "false", "none", "self"}


def _ancestors(scope) -> list:
    out = []
    while scope is not None:
        out.append(scope)
        scope = scope.parent
    return out


def _prefixes(path: str) -> list[str]:
    if not path:
        return []
    parts = path.split(".")
    return [".".join(parts[: k + 1]) for k in range(len(parts))]
