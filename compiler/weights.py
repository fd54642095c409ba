"""Weights named in the spec: `init:` files loaded into the built model, and `freeze:`.

`init:` reads a state_dict safely — a .safetensors file, or a .pt/.pth file through
`torch.load(weights_only=True)` (a yamlnet checkpoint's `model` entry is taken) — so a
spec still never runs code. Each item maps keys `from` a prefix of the file `into` a node
of the model; every weight of that node must be there with its shape, or the spec fails
with one line per offending key.

`freeze: true` on a node turns its weights' gradients off and keeps it in eval mode
(BatchNorm statistics and dropout fixed) while the rest of the model trains.
"""

from __future__ import annotations

import os

from .errors import SpecError

__all__ = ["apply_init", "apply_freeze", "read_state_dict"]


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
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise SpecError(f"cannot read {path}: {type(err).__name__}: {str(err).splitlines()[0][:200]}",
                        loc, where + ".file") from None  # fmt: skip
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a yamlnet checkpoint
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a Lightning checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SpecError(f"{path} is not a state_dict (a mapping of names to tensors)", loc, where + ".file")
    return state


def apply_init(module, spec) -> None:
    """Load every `init:` item into `module`, checking names and shapes first."""
    import torch

    model_state = module.state_dict()
    for item in spec.init:
        state = read_state_dict(item.path, item.loc, item.where)
        into = item.into + "." if item.into else ""
        targets = {k: v for k, v in model_state.items() if k.startswith(into)
                   and not any(k == e or k.startswith(e + ".") for e in item.exclude)}  # fmt: skip
        if item.into and not targets:
            raise SpecError(f"into: '{item.into}' has no weights in this model", item.loc, item.where + ".into")
        given = {into + k[len(item.source):]: v for k, v in state.items() if k.startswith(item.source)}
        problems = []
        for key, want in targets.items():
            got = given.get(key)
            file_key = item.source + key[len(into):]
            if got is None:
                problems.append(f"{key}: not in the file (looked for '{file_key}')")
            elif tuple(got.shape) != tuple(want.shape):
                problems.append(f"{key}: the file has {list(got.shape)} ('{file_key}'), the model "
                                f"{list(want.shape)}")  # fmt: skip
        unused = [k for k in given if k not in targets
                  and not any(k == e or k.startswith(e + ".") for e in item.exclude)]  # fmt: skip
        if unused:
            problems.append(f"the file has weights the model lacks: {', '.join(unused[:5])}"
                            f"{' ...' if len(unused) > 5 else ''} (exclude them, or pick them with from:)")  # fmt: skip
        if problems:
            raise SpecError(diagnostics=[_diag(f"init from {item.file}: {p}", item) for p in problems])
        with torch.no_grad():
            for key in targets:
                model_state[key].copy_(given[key])


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
