"""The public entry point, `import_module`, which runs the steps in turn: inputs, trace, module
tree, writer, check."""

from __future__ import annotations

from .check import _check
from .common import ImportResult, snake_case
from .load import _example, _input_decls, _samples
from .trace import _Traced
from .tree import _Tree
from .write import _Writer


# ---- the public entry point -----------------------------------------------------------------
def import_module(
    module,
    inputs: list[tuple[str | None, list, str]],
    *,
    name: str | None = None,
    dims: dict[str, int] | None = None,
    check: bool = True,
    header: str = "",
) -> ImportResult:
    """Write a spec for `module`, given its inputs as (name, shape, dtype)."""

    module = module.eval()
    decls = _input_decls(module, inputs)
    names = [n for n, _, _ in decls]
    sample = _samples(decls, dims or {})
    examples = [_example(shape, dtype, sample) for _, shape, dtype in decls]
    traced = _Traced(module, names, examples, decls, sample)
    tree = _Tree(traced)
    name = name or snake_case(type(module).__name__)
    writer = _Writer(tree, decls, name, header)
    text = writer.text()
    result = None
    if check:
        diff, compiled = _check(text, module, examples)
        if diff is None:  # a dropped argument the compiler could not infer: write them all
            writer = _Writer(tree, decls, name, header, keep_inferred=True)
            text = writer.text()
            diff, compiled = _check(text, module, examples, final=True)
        result = ImportResult(
            text, name, len(compiled.spec.nodes), _count(compiled.module), diff, sample
        )
    else:
        result = ImportResult(
            text, name, 0, _count(module), None, sample
        )
    return result


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())
