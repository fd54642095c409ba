"""Weights named in the spec: `init:` files loaded into the built model, and `freeze:`.

`init:` reads a state_dict safely — a .safetensors file, or a .pt/.pth file through
`torch.load(weights_only=True)` (a yamlnet checkpoint's `model` entry is taken) — so a
spec still never runs code. Each item maps keys `from` a prefix of the file `into` a node
of the model; every weight of that node must be there with its shape, or the spec fails
with one line per offending key.

`freeze: true` on a node, or a top-level `freeze:` list of names and globs (resolved to
node paths by the expand stage), turns its weights' gradients off and keeps it in eval
mode (BatchNorm statistics and dropout fixed) while the rest of the model trains.
"""

from __future__ import annotations

import os

from .errors import SpecError

__all__ = ["apply_init", "apply_freeze", "read_state_dict", "check_ties", "tie_targets", "is_frozen"]


def is_frozen(name: str, frozen: tuple[str, ...]) -> bool:
    """Whether node `name` is a frozen path or inside one.

    >>> is_frozen("layer1.0.conv1", ("conv1", "layer1"))
    True
    """
    return any(name == f or name.startswith(f + ".") for f in frozen)


def tie_targets(spec) -> dict[str, str]:
    """'node.param' -> the parameter it finally shares (chains of ties followed)."""
    direct = {f"{n.name}.{own}": target for n in spec.nodes for own, target in n.tie}
    final = {}
    for key in direct:
        seen, target = [key], direct[key]
        while target in direct and target not in seen:
            seen.append(target)
            target = direct[target]
        final[key] = target if target not in seen else None  # None: a cycle
    return final


def check_ties(typed, registry) -> None:
    """Every tie: names a parameter of the model with the same shape, not itself, no cycle."""
    spec = typed.graph["spec"]
    nodes = {n.name: n for n in spec.nodes}
    finals = tie_targets(spec)

    def shape_of(key: str):
        if key in nodes and nodes[key].op == "Parameter":
            return list(typed.nodes[key]["args"]["shape"])
        owner, _, pname = key.rpartition(".")
        node = nodes.get(owner)
        if node is None or registry.get(node.op).kind != "module":
            return None
        built = registry.get(node.op).instantiate(typed.nodes[owner]["args"], device="meta")
        param = dict(built.named_parameters(recurse=False)).get(pname)
        return None if param is None else list(param.shape)

    for node in spec.nodes:
        for own, target in node.tie:
            where = node.path + ".tie"
            if registry.get(node.op).kind != "module":
                raise SpecError(f"tie: applies to layers with weights, not {node.op}", node.loc, where)
            key = f"{node.name}.{own}"
            mine = shape_of(key)
            if mine is None:
                raise SpecError(f"tie: {node.op} has no parameter '{own}'", node.loc, where)
            if finals[key] is None or finals[key] == key:
                raise SpecError(f"tie: {key} ties back to itself", node.loc, where, "a tie names another node's weight")
            theirs = shape_of(finals[key])
            if theirs is None:
                raise SpecError(f"tie: the model has no parameter '{target}'", node.loc, where,
                                "name it as in the state_dict: node.weight")  # fmt: skip
            if theirs != mine:
                raise SpecError(f"tie: {own} is {mine} but {target} is {theirs}", node.loc, where)


def read_state_dict(path: str, loc=None, where: str = "init") -> dict:
    """The tensors of a weights file (safetensors, or a torch state_dict/checkpoint)."""
    import torch

    if not os.path.isfile(path):
        raise SpecError(f"no such file: {path}", loc, where + ".file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            from ..runtime.checkpoint import load_tensors

            state = load_tensors(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        why = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err):  # torch's advice to allow code would be wrong here
            why = "it holds more than tensors (loading it would run code), and only tensors are read"
        raise SpecError(f"cannot read {path}: {why}", loc, where + ".file") from None
    from ..runtime.checkpoint import is_checkpoint, loaded_problem, verified
    from ..runtime.errors import CheckpointError

    problem = loaded_problem(state)
    if problem:
        raise SpecError(f"cannot read {path}: {problem}", loc, where + ".file")

    if is_checkpoint(state):  # a yamlnet checkpoint is verified as eval and resume verify it
        try:
            state = verified(state, path)["model"]
        except CheckpointError as err:
            raise SpecError(err.diagnostics[0].message, loc, where + ".file") from None
        except (KeyError, TypeError):
            raise SpecError(f"{path} is a checkpoint without model weights", loc, where + ".file") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a Lightning checkpoint
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):  # fmt: skip
        raise SpecError(f"{path} is not a state_dict (a mapping of names to tensors)", loc, where + ".file")
    return state


def apply_init(module, spec) -> None:
    """Load every `init:` item into `module`, checking names and shapes first."""
    model_state = module.state_dict()
    for item in spec.init:
        _init_item(model_state, item)


def _init_item(model_state: dict, item) -> None:
    """Load one `init:` item into the tensors of `model_state` (in place), or refuse it."""
    import torch

    if item.torchvision:
        from .pretrained import hub_file

        state = read_state_dict(hub_file(item), item.loc, item.where)
    else:
        state = read_state_dict(item.path, item.loc, item.where)

    def under(key: str, prefix: str) -> bool:
        return not prefix or key == prefix or key.startswith(prefix + ".")

    def excluded(key: str) -> bool:
        return any(under(key, e) for e in item.exclude)

    into, source = item.into, item.source.rstrip(".")
    targets = {k: v for k, v in model_state.items() if under(k, into) and not excluded(k)}
    if item.into and not targets:
        raise SpecError(f"into: '{item.into}' has no weights in this model", item.loc, item.where + ".into")

    def file_key(key: str) -> str:  # the model key under into -> the file key under from
        if not source:
            return key
        rest = key[len(into):].lstrip(".") if into else key
        return f"{source}.{rest}" if rest else source

    wanted = {file_key(k): k for k in targets}
    problems = []
    for key, want in targets.items():
        got = state.get(file_key(key))
        if got is None:
            problems.append(f"{key}: not in the file (looked for '{file_key(key)}')")
        elif tuple(got.shape) != tuple(want.shape):
            problems.append(f"{key}: the file has {list(got.shape)} ('{file_key(key)}'), the model "
                            f"{list(want.shape)}")  # fmt: skip
        elif got.dtype.is_floating_point != want.dtype.is_floating_point:
            problems.append(f"{key}: the file has {got.dtype} ('{file_key(key)}'), the model {want.dtype}")
    # file weights meant for the target that it lacks (under from:, or under into: by the same name)
    unused = [k for k in state if under(k, source or into) and k not in wanted and not excluded(k)]
    if unused:
        problems.append(f"the file has weights the model lacks: {', '.join(unused[:5])}"
                        f"{' ...' if len(unused) > 5 else ''} (exclude them, or pick them with from:)")  # fmt: skip
    if problems:
        raise SpecError(diagnostics=[_diag(f"{item.label}: {p}", item) for p in problems])
    with torch.no_grad():
        for key in targets:
            model_state[key].copy_(state[file_key(key)])


def _diag(message: str, item):
    from .errors import Diagnostic

    return Diagnostic(message, item.loc, item.where)


def apply_freeze(module, spec) -> None:
    """Turn off the gradients of frozen nodes and keep them in eval mode."""
    for name in spec.frozen:
        try:
            target = module.get_submodule(name)
        except AttributeError:
            target = None
        if target is None:  # a Parameter node
            try:
                module.get_parameter(name).requires_grad_(False)
            except AttributeError:
                continue  # a node without weights: nothing to freeze
            continue
        for p in target.parameters():
            p.requires_grad_(False)
        for m in target.modules():  # the generated forward calls the leaves, not containers
            if not any(True for _ in m.children()):
                m.register_forward_pre_hook(_stay_in_eval)
    module.yamlnet_frozen = tuple(spec.frozen)


def _stay_in_eval(module, args):
    if module.training:
        module.train(False)
