"""Checking the written spec: compiling it, loading the module's state_dict strictly and
comparing outputs on the sample inputs."""

from __future__ import annotations

import math

from ..errors import SpecError
from .common import ImportFailure, _few


def _check(text: str, module, examples, final: bool = False):
    """Compile `text`, load the module's weights strictly, compare outputs on examples."""
    import torch

    from ..compile import compile_spec

    try:
        compiled = compile_spec(text)
    except SpecError as err:
        if not final:
            return None, None
        raise ImportFailure(
            f"the written spec does not compile: {err}", hint="please report this"
        ) from err
    built = compiled.module
    result = built.load_state_dict(module.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ImportFailure(
            "the written spec's state_dict differs from the module's: "
            f"missing {_few(result.missing_keys)}, unexpected {_few(result.unexpected_keys)}"
        )
    built.eval()
    with torch.no_grad():
        diff = _compare(_flat(module(*examples)), _flat(built(*examples)), "")
    if compiled.spec.train_outputs:
        diff = max(diff, _compare_training(module, built, examples))
        built.eval()
    return diff, compiled


def _compare_training(module, built, examples) -> float:
    """Both in training, the module on a copy (batch norm's running statistics move), the
    random generator seeded alike for each: the spec keeps forward's order, so dropout draws
    the same masks."""
    import copy

    import torch

    module = copy.deepcopy(module).train()
    built.train()
    outs = []
    for net in (module, built):
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            outs.append(_flat(net(*examples)))
    return _compare(*outs, " in training")


def _compare(want: list, got: list, mode: str) -> float:
    """The largest difference of the module's outputs (`want`) and the spec's, or refused."""
    if len(want) != len(got) or any(a.shape != b.shape for a, b in zip(want, got, strict=False)):
        raise ImportFailure(
            f"the written spec's outputs{mode} differ in number or shape from the module's"
        )
    diff = max((float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
                for a, b in zip(want, got, strict=True)), default=0.0)  # fmt: skip
    scale = max((float(a.double().abs().max()) for a in want if a.numel()), default=1.0)
    if not math.isfinite(diff) or diff > 1e-4 * max(1.0, scale):
        raise ImportFailure(
            f"the written spec's outputs{mode} differ from the module's (max abs diff {diff:.3g})"
        )
    return diff


def _flat(value) -> list:
    import torch

    if isinstance(value, torch.Tensor):
        return [value.detach()]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flat(v)]
    return []
