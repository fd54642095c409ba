"""Stage 7 — codegen: a typed graph -> `torch.fx.GraphModule`.

The forward is straight-line generated Python (no interpreter loop). Submodules and
parameters sit at the spec's hierarchical names, so `state_dict()` keys read like the
spec (`layer1.0.conv1.weight`). This is the only stage that allocates weights.

The generated forward looks each container's submodules up once per call, at its top
(`_d2 = _d1['0']._modules`, then `_d2['conv1'](x)`), instead of fx's
`getattr(self.layer1, "0").conv1(x)` at each use: every such step is a
`Module.__getattr__` fallback, and on a 200-layer MLP at batch 1 they made the forward
1.4x a hand-written `ModuleList` loop (benchmarks/, row 2; now 1.0x).
The calls still go through `Module.__call__`, so hooks run; the lookup reads `_modules`,
so a submodule replaced by assignment is the one called. The rewrite is a code
transformer on the fx graph (`Graph.on_generate_code`), so it survives `recompile()`,
`deepcopy` and pickling. TorchScript cannot compile `_modules[...]`: `torch.jit.script`
gets fx's plain code through `__prepare_scriptable__`.

`emit_python` writes the same model as a standalone file — `import torch` and the
module class, nothing from yamlnet — for people who want to leave with plain PyTorch.
"""

from __future__ import annotations

import copy
import keyword
import re
from typing import Any

import networkx as nx

from .errors import ShapeError, SpecError
from .expand import Ref
from .graph import topological_order
from .registry import REGISTRY
from .shapes import first_line

__all__ = ["generate_module", "emit_python", "class_name", "plain_code", "hoist_lookups", "eval_module",
           "output_names"]


def class_name(spec_name: str) -> str:
    """'small_resnet' -> 'SmallResnet' (a valid Python identifier)."""
    parts = re.split(r"[^0-9A-Za-z]+", spec_name)
    name = "".join(p[:1].upper() + p[1:] for p in parts if p) or "Model"
    return name if name[0].isalpha() else "Model" + name


def generate_module(typed: nx.DiGraph, registry=REGISTRY, block_modules: bool = False):
    """Build the GraphModule: real modules/parameters, fx graph, generated forward
    (`block_modules`: each outermost block instance a module that runs, see regions.py)."""
    import torch
    import torch.fx as fx

    spec = typed.graph["spec"]
    root = torch.nn.Module()
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    sizes: dict[str, fx.Node] = {}

    def value(ref: Ref) -> fx.Node:
        node = env[ref.node]
        for i in ref.index:
            node = graph.call_function(_getitem(), (node, i))
        return node

    def size_of(sym: str) -> fx.Node:
        if sym not in sizes:
            inp, dim = spec.symbols[sym]
            sizes[sym] = graph.call_method("size", (env[inp], dim))
        return sizes[sym]

    consts: dict[str, Any] = {}  # constant nodes' values, computed now
    owned: list[tuple] = []  # (spec order, name, module or tensor, kind, persistent), installed last

    for name in topological_order(typed):
        data = typed.nodes[name]
        if data["kind"] == "input":
            env[name] = graph.placeholder(_py_name(name))
            continue
        node, args = data["spec"], data["args"]
        op = registry.get(node.op)
        fx_name = _py_name(name.replace(".", "_"))
        if data.get("constant"):
            consts[name] = op.apply(None, [_pick(consts, r) for r in node.inputs], args, node.call,
                                    torch.get_default_device())  # fmt: skip
            if folded_into_buffer(typed, name):
                owned.append((data["order"], name, _one_tensor(consts[name], node), "buffer", False))
                env[name] = graph.create_node("get_attr", name, (), {}, fx_name)
            continue
        if op.owns_state:
            built = _instantiate(op, args, node)
            if built is None:  # a Buffer that holds its input, a constant
                built = op.apply(None, [_pick(consts, r) for r in node.inputs], args, {})
            owned.append((data["order"], name, built, op.kind, args.get("persistent", True)))
            if op.kind == "module":
                inputs = tuple(value(r) for r in node.inputs)
                env[name] = graph.create_node("call_module", name, inputs, dict(node.call), fx_name)
            else:
                env[name] = graph.create_node("get_attr", name, (), {}, fx_name)
            continue
        inputs = [value(r) for r in node.inputs]
        runtime = dict(args)
        for key in op.size_args:
            if key in runtime:
                runtime[key] = [size_of(d) if isinstance(d, str) else d for d in runtime[key]]
        pos, kw = op.call_parts(inputs, runtime)
        kw.update(node.call)
        kind = "call_method" if op.kind == "method" else "call_function"
        env[name] = graph.create_node(kind, op.target, pos, kw, fx_name)
    # in the order the spec writes them (so state_dict keys too), not the order they run
    for _, name, built, kind, persistent in sorted(owned, key=lambda item: item[0]):
        _install(root, name, built, kind, persistent)
    _tie(root, typed)
    for name, fx_node in env.items():
        fx_node.meta["spec_node"] = name  # which spec node each fx node computes (summary costs)
    outs = [value(ref) for _, ref in typed.graph["outputs"]]  # the train outputs last
    output = graph.output(outs[0] if len(outs) == 1 else tuple(outs))
    output.meta.update(eval_outputs=len(spec.outputs), names=tuple(n for n, _ in typed.graph["outputs"]))
    if spec.checkpointed or block_modules:
        from .expand import outermost
        from .regions import finish_regions, outline_region

        for prefix in spec.checkpointed:
            outline_region(graph, root, prefix, typed, checkpoint=True)
        if block_modules:  # those not checkpointed, which are modules already
            done = spec.checkpointed
            for prefix in outermost([*done, *spec.block_instances]):
                if prefix not in done:
                    outline_region(graph, root, prefix, typed)
        finish_regions(graph)
    graph.lint()
    guard = training_guard(graph)
    graph.on_generate_code(lambda _previous: hoist_lookups if guard is None else lambda body: guard(hoist_lookups(body)))
    return _ordered_like(_module_class()(root, graph, class_name=class_name(spec.name)), root)


def _ordered_like(gm, root):
    """fx copies the submodules, parameters and buffers in the order the graph first uses
    them; put them back in `root`'s (the spec's writing order), which state_dict follows:
    torchvision's PatchMerging registers `reduction` before the `norm` that runs first."""
    for path, source in root.named_modules():
        target = gm.get_submodule(path) if path else gm
        for attr in ("_modules", "_parameters", "_buffers"):
            mine, theirs = getattr(target, attr), getattr(source, attr)
            if list(mine) != list(theirs) and set(mine) == set(theirs):
                setattr(target, attr, {k: mine[k] for k in theirs})
    return gm


class TrainingGuard:
    """fx code transformer for a spec with train outputs: the lines of nodes that only
    train outputs need run under `if self.training:`, and in eval the return gives the
    outputs alone (`return (logits, aux) if self.training else logits`). fx writes each
    node as one line (with its `x = None` frees, which only drop references early)."""

    def __init__(self, names: frozenset[str], eval_expr: str):
        self.names, self.eval_expr = names, eval_expr

    def __call__(self, body: list[str]) -> list[str]:
        out = []
        for piece in body:
            var = piece.split(" = ", 1)[0] if " = " in piece else ""
            if var in self.names:
                piece = "if self.training: " + piece
            elif piece.startswith("return "):
                piece = f"return {piece[7:].rstrip()} if self.training else {self.eval_expr}\n"
            out.append(piece)
        return out


def _returned(graph) -> tuple[list, int]:
    """What `graph` returns, and how many of those (the first) eval returns: the output
    node's `eval_outputs` (all of them in a graph without it)."""
    output = graph.output_node()
    value = output.args[0]
    outs = list(value) if isinstance(value, tuple) else [value]
    return outs, output.meta.get("eval_outputs", len(outs))


def training_guard(graph) -> TrainingGuard | None:
    """The guard for `graph` (None without train outputs): which nodes only the train
    outputs need, read from the graph and its output node's `eval_outputs`."""
    outs, n = _returned(graph)
    if n == len(outs):
        return None
    needed, stack = set(), list(outs[:n])
    while stack:
        node = stack.pop()
        if node.name not in needed:
            needed.add(node.name)
            stack += node.all_input_nodes
    names = frozenset(m.name for m in graph.nodes if m.op not in ("placeholder", "output") and m.name not in needed)
    eval_expr = outs[0].name if n == 1 else "(" + ", ".join(o.name for o in outs[:n]) + ",)"
    return TrainingGuard(names, eval_expr)


def output_names(gm) -> tuple[str, ...]:
    """The names of what `gm` returns in its current mode (train outputs in training)."""
    output = gm.graph.output_node()
    names = output.meta.get("names")
    if names is None:
        raise ValueError("this module has no output names: it was not compiled from a spec")
    return names if gm.training else names[: output.meta["eval_outputs"]]


def eval_module(gm):
    """`gm` as its eval-mode forward (a view sharing its modules and weights), for
    exporters: torch.export and TorchScript read the graph, not the generated forward,
    so a spec with train outputs hands them this one. `gm` itself without them."""
    if training_guard(gm.graph) is None:
        return gm.eval()
    graph = eval_graph(gm.graph)
    graph.on_generate_code(lambda _previous: hoist_lookups)
    return _module_class()(gm, graph, class_name=type(gm).__name__).eval()


def eval_graph(graph):
    """A copy of `graph` without the train outputs and the nodes only they need (what
    TorchScript compiles: it cannot type a forward whose outputs change with the mode)."""
    graph = copy.deepcopy(graph)
    from .regions import checkpointed

    for node in list(graph.nodes):  # a checkpointed layer or block: called plainly
        if node.op == "call_function" and node.target is checkpointed:
            handle, *args = node.args
            with graph.inserting_before(node):
                plain = graph.call_module(handle.target, tuple(args), dict(node.kwargs))
            plain.meta.update(node.meta)
            node.replace_all_uses_with(plain)
            graph.erase_node(node)
            if not handle.users:
                graph.erase_node(handle)
    outs, n = _returned(graph)
    if n < len(outs):
        graph.output_node().args = (outs[0] if n == 1 else tuple(outs[:n]),)
        for node in reversed(list(graph.nodes)):  # what only the train outputs used, last first
            if node.op not in ("placeholder", "output") and not node.users:
                graph.erase_node(node)
    return graph


def folded_into_buffer(typed: nx.DiGraph, name: str) -> bool:
    """Whether a constant node is kept as a (non-persistent) buffer of its own: when a
    node computed at run time reads it, or it is an output. Constants read only by other
    constants, or by a Buffer that holds them, live only while the model is built."""
    outputs = {ref.node for _, ref in typed.graph["outputs"]}
    return name in outputs or any(
        not typed.nodes[user].get("constant") and typed.nodes[user]["spec"].op != "Buffer"
        for user in typed.successors(name))


def _pick(values: dict, ref: Ref) -> Any:
    value = values[ref.node]
    for i in ref.index:
        value = value[i]
    return value


def _one_tensor(value, node):
    if isinstance(value, (tuple, list)):
        raise SpecError(f"'{node.name}' is a tuple of {len(value)} constants, read by a node computed at "
                        "run time", node.loc, node.path, "index it first: a getitem or stack node")  # fmt: skip
    return value


def _module_class():
    """`fx.GraphModule` that hands TorchScript the plain fx code (defined on first use,
    so importing the compiler does not import torch)."""
    global _SpecGraphModule
    if _SpecGraphModule is None:
        import torch.fx as fx

        class SpecGraphModule(fx.GraphModule):
            def __prepare_scriptable__(self):
                graph = eval_graph(self.graph)  # a copy
                graph.on_generate_code(lambda _previous: None)
                return fx.GraphModule(self, graph, class_name=type(self).__name__)

            def __reduce__(self):
                # fx pickles the generated code and traces it again when loading; with
                # train outputs, trace it in training mode (every node) and guard again
                rebuild, (body, *rest) = super().__reduce__()
                if training_guard(self.graph) is None:
                    return rebuild, (body, *rest)
                meta = self.graph.output_node().meta
                return _rebuild_guarded, (rebuild, {**body, "training": True}, tuple(rest), meta["eval_outputs"],
                                          self.training, meta.get("names"))  # fmt: skip

        _SpecGraphModule = SpecGraphModule
    return _SpecGraphModule


_SpecGraphModule = None


def _rebuild_guarded(rebuild, body: dict, rest: tuple, eval_outputs: int, training: bool, names=None):
    """Unpickle a module with train outputs: fx's rebuild traced every node; mark which
    outputs are eval's and put the training guard back."""
    traced = rebuild(body, *rest)
    traced.graph.output_node().meta.update(eval_outputs=eval_outputs, **({"names": names} if names else {}))
    guard = training_guard(traced.graph)
    traced.graph.on_generate_code(lambda _previous: lambda lines: guard(hoist_lookups(lines)))
    return _module_class()(traced, traced.graph, class_name=type(traced).__name__).train(training)

# one fx `self.<path>` expression as fx writes a call_module/get_attr target:
# `self.fc`, `getattr(self.layers, "0")`, `getattr(self.layer1, "0").conv1`
_TARGET = re.compile(r'^(\w+ = )((?:getattr\()*self((?:\.[A-Za-z_]\w*|, "[^"\\]*"\))+))')
_STEP = re.compile(r'\.([A-Za-z_]\w*)|, "([^"\\]*)"\)')


def hoist_lookups(body: list[str]) -> list[str]:
    """fx code transformer: look each container's submodules up once, at the top.

    `layers_0 = getattr(self.layers, "0")(x)` becomes `layers_0 = _d1['0'](x)` after
    `_d1 = self._modules['layers']._modules` at the top; a weight (`get_attr`) becomes a
    local of its own. Lines that do not have fx's form are left as they are (correct,
    only slower).
    """
    taken = set(re.findall(r"\w+", "".join(body)))
    local: dict[tuple[str, ...], str] = {}
    hoisted: list[str] = []

    def fresh(value: str, prefix: str = "_d") -> str:
        name = f"{prefix}{len(hoisted)}"
        while name in taken:
            name += "_"
        hoisted.append(f"{name} = {value}\n")
        return name

    def children(path: tuple[str, ...]) -> str:  # the `_modules` dict of the module at path
        if path not in local:
            local[path] = fresh(f"{children(path[:-1])}[{path[-1]!r}]._modules" if path else "self._modules")
        return local[path]

    def target(path: tuple[str, ...], called: bool) -> str:
        if called:  # call_module: index the hoisted dict at the call
            return f"{children(path[:-1])}[{path[-1]!r}]"
        if path not in local:  # get_attr: a parameter, buffer or module, hoisted whole
            owner = f"{children(path[:-2])}[{path[-2]!r}]" if len(path) > 1 else "self"
            local[path] = fresh(f"getattr({owner}, {path[-1]!r})", "_a")
        return local[path]

    out = []
    for piece in body:
        match = _TARGET.match(piece)
        if match:
            path = tuple(a or b for a, b in _STEP.findall(match.group(3)))
            called = piece[match.end() : match.end() + 1] == "("  # call_module, else get_attr
            piece = match.group(1) + target(path, called) + piece[match.end() :]
        out.append(piece)
    return hoisted + out


def plain_code(gm) -> str:
    """fx's own code for `gm`'s graph, without the hoisted lookups (for reading/emitting)."""
    with gm.graph.on_generate_code(lambda _previous: training_guard(gm.graph)):
        return gm.graph.python_code(root_module="self").src


def _tie(root, typed: nx.DiGraph) -> None:
    """Make each `tie:` parameter the parameter it finally shares (checked in the shapes
    stage: it exists, fits, and the ties make no cycle)."""
    from .weights import tie_targets

    for key, target in tie_targets(typed.graph["spec"]).items():
        owner, _, own = key.rpartition(".")
        setattr(root.get_submodule(owner), own, root.get_parameter(target))


def _instantiate(op, args: dict, node):
    try:
        return op.instantiate(args)
    except (RuntimeError, MemoryError) as err:  # e.g. an absurd width: allocation fails
        raise ShapeError(f"cannot allocate {op.name}: {first_line(err)}", node.loc, node.path,
                         "are the sizes in this node what you meant?") from None  # fmt: skip


def _getitem():
    import operator

    return operator.getitem


def _py_name(name: str) -> str:
    name = re.sub(r"\W", "_", name)
    if name[:1].isdigit():
        name = "n" + name
    return name + "_" if keyword.iskeyword(name) else name


def _install(root, path: str, built, kind: str, persistent: bool) -> None:
    """Place a module/parameter/buffer at a dotted path, creating parent containers."""
    import torch

    *parents, leaf = path.split(".")
    owner = root
    for part in parents:
        child = owner._modules.get(part)
        if child is None:
            child = torch.nn.Module()
            owner.add_module(part, child)
        owner = child
    if kind == "module":
        owner.add_module(leaf, built)
    elif kind == "parameter":
        owner.register_parameter(leaf, built)
    else:
        owner.register_buffer(leaf, built, persistent=persistent)


# ---- standalone Python -------------------------------------------------------------


def emit_python(typed: nx.DiGraph, gm, registry=REGISTRY) -> str:
    """Source of a standalone module file equivalent to `gm` (needs only torch)."""
    spec = typed.graph["spec"]
    for n in typed:
        if typed.nodes[n]["kind"] == "op":
            op = registry.get(typed.nodes[n]["spec"].op)
            if op.source not in STANDALONE_SOURCES:
                node = typed.nodes[n]["spec"]
                raise SpecError(f"op '{op.name}' comes from plugin '{op.source}'; the model cannot be "
                                "written as standalone PyTorch", node.loc, node.path)  # fmt: skip
    cls = class_name(spec.name)
    lines = [
        f"# {cls}: generated by yamlnet from {spec.file!r}. Needs only PyTorch.",
        "",
        "import functools  # noqa: F401",
        "import operator  # noqa: F401",
        "",
        "import torch",
        "import torch.nn.functional  # noqa: F401",
        "from torch import nn",
        "",
    ]
    if any(registry.get(typed.nodes[n]["spec"].op).source.startswith("torchvision")
           for n in typed if typed.nodes[n]["kind"] == "op"):  # fmt: skip
        lines.insert(4, "import torchvision")
    if spec.checkpointed:
        lines.insert(lines.index("import torch") + 1, "import torch.utils.checkpoint  # noqa: F401")
    regions = {}  # checkpointed block instances: a class each, its forward the instance's nodes
    for prefix in spec.checkpointed:
        region = gm.get_submodule(prefix)
        if isinstance(region, _module_class()):
            regions[prefix] = f"{cls}_{_py_name(prefix.replace('.', '_'))}"
            body = [line for line in plain_code(region).strip("\n").splitlines() if line.strip()]
            lines += ["", "", f"class {regions[prefix]}(nn.Module):",
                      f'    """{prefix}: run again during backward (checkpoint: true)."""', "",
                      *("    " + line for line in body)]  # fmt: skip
    lines += ["", "", f"class {cls}(nn.Module):", "    def __init__(self):", "        super().__init__()"]
    made: set[str] = set()
    for name in topological_order(typed):
        data = typed.nodes[name]
        if data["kind"] != "op":
            continue
        op = registry.get(data["spec"].op)
        if data.get("constant"):  # computed here, as when the model is built
            lines.append(f"        {_const_name(name)} = {_constant_code(op, data['spec'], data['args'])}")
            if not folded_into_buffer(typed, name):
                continue
        elif not op.owns_state:
            continue
        *parents, leaf = name.split(".")
        for k in range(1, len(parents) + 1):
            prefix = ".".join(parents[:k])
            if prefix not in made:
                made.add(prefix)
                container = f"{regions[prefix]}()" if prefix in regions else "nn.Module()"
                lines.append(f"        {_owner(parents[: k - 1])}.add_module({parents[k - 1]!r}, {container})")
        if data.get("constant"):
            lines.append(f"        {_owner(parents)}.register_buffer({leaf!r}, {_const_name(name)}, persistent=False)")
        else:
            lines.append("        " + _construct(op, data["args"], _owner(parents), leaf, registry, data["spec"]))
    for name in topological_order(typed):  # shared weights (tie:)
        for own, target in getattr(typed.nodes[name].get("spec"), "tie", ()):
            lines.append(f"        {_owner(name.split('.'))}.{own} = self.get_parameter({target!r})")
    modules, params = _frozen_parts(gm, spec.frozen)
    if modules:
        lines += [f"        for path in {modules!r}:  # freeze: no gradients, kept in eval mode",
                  "            self.get_submodule(path).requires_grad_(False)",
                  "        self.train(self.training)  # from the start, not only after .train()"]  # fmt: skip
    if params:
        lines += [f"        for name in {params!r}:  # freeze: no gradients",
                  "            self.get_parameter(name).requires_grad_(False)"]  # fmt: skip
    after = lines.index("from torch import nn") + 1  # our own functions, after the imports
    lines[after:after] = _helpers(typed, registry)
    code = plain_code(gm).strip("\n")
    body = [line for line in code.splitlines() if line.strip()]
    lines += ["", *("    " + line if line.strip() else "" for line in body), ""]
    if modules:
        lines += ["    def train(self, mode: bool = True):",
                  "        super().train(mode)",
                  f"        for path in {modules!r}:  # frozen: BatchNorm statistics and dropout stay fixed",
                  "            self.get_submodule(path).train(False)",
                  "        return self", ""]  # fmt: skip
    return "\n".join(lines) + "\n"


def _frozen_parts(gm, frozen: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The frozen paths that are submodules of `gm`, and those that are parameters (a
    Parameter node); a frozen node without weights (an `add`) has neither."""
    modules, params = [], []
    for path in frozen:
        try:
            gm.get_submodule(path)
            modules.append(path)
        except AttributeError:
            try:
                gm.get_parameter(path)
                params.append(path)
            except AttributeError:
                continue
    return tuple(modules), tuple(params)


STANDALONE_SOURCES = ("torch", "torch.nn", "torchvision.ops", "torchvision.models", "yamlnet")


def _helpers(typed: nx.DiGraph, registry) -> list[str]:
    """Our own functions the generated forward calls, defined under fx's names for them."""
    from .ops.functions import STANDALONE_FUNCTIONS

    out = []
    used = {registry.get(typed.nodes[n]["spec"].op).target for n in typed if typed.nodes[n]["kind"] == "op"}
    functions = dict(STANDALONE_FUNCTIONS)
    if typed.graph["spec"].checkpointed:
        from .regions import STANDALONE_CHECKPOINTED, checkpointed

        functions[checkpointed] = STANDALONE_CHECKPOINTED
        used.add(checkpointed)
    for fn, source in functions.items():
        if fn in used:
            name = re.sub(r"[^0-9a-zA-Z_]+", "_", f"{fn.__module__}.{fn.__name__}")
            out += ["", "", *source.format(name=name).splitlines()]
    return out


def _owner(parents: list[str]) -> str:
    expr = "self"
    for part in parents:
        expr = f"{expr}.get_submodule({part!r})" if not part.isidentifier() else f"{expr}.{part}"
    return expr


def _class_code(op) -> str:
    """How the standalone file names a module op's class."""
    if op.source == "torch.nn":
        return f"nn.{op.target.__name__}"
    if op.source == "torchvision.ops":
        return f"torchvision.ops.{op.target.__name__}"
    return f"{op.target.__module__}.{op.target.__qualname__}"


def _layer_code(value, registry) -> str:
    """A layer-class argument as code: `nn.Hardswish`, `functools.partial(nn.GELU, ...)`."""
    if value is None:
        return "None"
    if isinstance(value, str):
        return _class_code(registry.get(value))
    kw = "".join(f", {k}={v!r}" for k, v in value.items() if k != "op")
    return f"functools.partial({_class_code(registry.get(value['op']))}{kw})"


def _const_name(name: str) -> str:
    return "_c_" + _py_name(name.replace(".", "_"))


class _Code(str):
    """Source text that prints as itself inside a repr'd list: `[_c_a, _c_b]`."""

    def __repr__(self) -> str:
        return str(self)


def _constant_code(op, node, args: dict) -> str:
    """A constant node's value as code over the constants before it."""
    from torch.fx.node import _get_qualified_name

    refs = [_Code(_const_name(r.node) + "".join(f"[{i}]" for i in r.index)) for r in node.inputs]
    pos, kw = op.call_parts(refs, args)
    text = ", ".join([*map(repr, pos), *(f"{k}={v!r}" for k, v in kw.items())])
    if op.kind == "method":
        rest = ", ".join([*map(repr, pos[1:]), *(f"{k}={v!r}" for k, v in kw.items())])
        return f"{pos[0]}.{op.target}({rest})"
    return f"{_get_qualified_name(op.target).replace('_operator.', 'operator.')}({text})"


def _construct(op, args: dict, owner: str, leaf: str, registry=REGISTRY, node=None) -> str:
    if op.kind == "buffer" and "shape" not in args:  # holds its input, a constant
        value = _const_name(node.inputs[0].node) + "".join(f"[{i}]" for i in node.inputs[0].index)
        dtype = f"torch.{args['dtype']}" if "dtype" in args else None
        persistent = args.get("persistent", True)
        return f"{owner}.register_buffer({leaf!r}, {value}.detach().to(dtype={dtype}, copy=True), persistent={persistent})"
    if op.kind == "module":
        kw = ", ".join(f"{k}={_layer_code(v, registry) if op.args.get(k) and op.args[k].layer else repr(v)}"
                       for k, v in args.items())  # fmt: skip
        return f"{owner}.add_module({leaf!r}, {_class_code(op)}({kw}))"
    shape = tuple(args["shape"])
    dtype = args.get("dtype", "float32")
    tensor = _fill_code(f"torch.empty({shape!r}, dtype=torch.{dtype})", args)
    if op.kind == "parameter":
        grad = args.get("requires_grad", True)
        return f"{owner}.register_parameter({leaf!r}, nn.Parameter({tensor}, requires_grad={grad}))"
    persistent = args.get("persistent", True)
    return f"{owner}.register_buffer({leaf!r}, {tensor}, persistent={persistent})"


def _fill_code(tensor: str, args: dict) -> str:
    """`tensor` initialised like make_tensor's `fill`, with torch.nn.init."""
    from .ops.tensors import fill_call

    name, values = fill_call(args)
    return f"nn.init.{name}({', '.join([tensor, *map(repr, values)])})"
