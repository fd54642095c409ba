"""Property-based fuzzing of the compiler front end.

Take the valid specs in specs/*.yaml, break them, and check the one promise the
compiler makes about bad input: `compile_spec(..., build=False)` either succeeds or
raises `SpecError` (located, one line per problem). No TypeError, KeyError,
RecursionError, RuntimeError, ... may escape, and nothing may hang.

Two kinds of mutation:

- byte level: delete, insert, flip and duplicate chunks of the file's bytes (the result
  is written to a file, so that invalid UTF-8 reaches the loader too);
- structure level: `yaml.safe_load` the spec, replace random values or keys with junk
  (strings, negative and huge numbers, lists, nested mappings, `${...}` expressions,
  names of other nodes and ops), and `yaml.safe_dump` it back.

The default budget is small (a few hundred examples, derandomized, so CI is stable).
The larger, random budget is marked slow and runs only when asked for:

    YAMLNET_SLOW_FUZZ=1 python -m pytest tests/test_fuzz.py -m slow
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yamlnet.compiler.compile import compile_spec
from yamlnet.compiler.errors import SpecError

from .conftest import Hang, time_limit

ROOT = Path(__file__).resolve().parent.parent
SPEC_FILES = sorted((ROOT / "specs").glob("*.yaml"))
SPEC_TEXT = {p.name: p.read_text(encoding="utf-8") for p in SPEC_FILES}
# LSTM shape inference costs over a second per compile: only the slow budget fuzzes it.
FAST_NAMES = sorted(n for n in SPEC_TEXT if n != "lstm_classifier.yaml")
ALL_NAMES = sorted(SPEC_TEXT)

slow_fuzz = pytest.mark.skipif(
    not os.environ.get("YAMLNET_SLOW_FUZZ"), reason="larger fuzz budget: set YAMLNET_SLOW_FUZZ=1"
)

PER_EXAMPLE_LIMIT_S = 10  # a compile that takes longer than this counts as a hang

FAST = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(
    max_examples=2000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---------------------------------------------------------------------------------------
# the property
# ---------------------------------------------------------------------------------------


def check_compiles_or_spec_error(source, shown: str) -> None:
    """The property: success, or a SpecError whose every diagnostic is located."""
    try:
        with time_limit(PER_EXAMPLE_LIMIT_S):
            compile_spec(source, build=False)
    except SpecError as err:
        text = str(err)
        assert text.strip(), f"empty SpecError for:\n{shown}"
        assert "Traceback" not in text
        unlocated = [str(d) for d in err.diagnostics if d.loc is None]
        assert not unlocated, f"unlocated diagnostic {unlocated} for:\n{shown}"
    except Hang:
        pytest.fail(f"compile did not finish in {PER_EXAMPLE_LIMIT_S} s for:\n{shown}")
    except Exception as err:  # noqa: BLE001 - the point of the test
        pytest.fail(f"{type(err).__name__} escaped: {err!s:.300}\nfor:\n{shown}")


# ---------------------------------------------------------------------------------------
# byte-level mutations
# ---------------------------------------------------------------------------------------
YAML_BYTES = b" \n\t:-,[]{}#&*!|>'\"%@`?$<~.0123456789eEaxNT_\\"
JUNK_BYTES = st.one_of(
    st.binary(min_size=1, max_size=12),
    st.lists(st.sampled_from(list(YAML_BYTES)), min_size=1, max_size=12).map(bytes),
    st.sampled_from(
        [
            b"${",
            b"}",
            b"<<: ",
            b"---\n",
            b"&a ",
            b"*a",
            b"!!str ",
            b"\xff",
            b"\xc3",
            b"\x00",
            b"\xe2\x80\xae",
            b"\t",
            b"\n  ",
            b": ",
            b"- ",
            b"[[[[",
            b"]]]]",
            b"{",
            b"no",
            b"010",
            b"1:30",
            b"1_000",
            b".inf",
            b"1e400",
            b"99999999999999999999",
            b"repeat: 99999999",
            b"in: ",
            b"op: ",
            b"block: ",
            b"include: [",
            b"shape(",
            b"**",
            b"//0",
        ]
    ),  # fmt: skip
)


@st.composite
def byte_mutants(draw, names=FAST_NAMES) -> bytes:
    data = bytearray(SPEC_TEXT[draw(st.sampled_from(names))].encode("utf-8"))
    for _ in range(draw(st.integers(1, 4))):
        n = len(data)
        i = draw(st.integers(0, n))
        j = draw(st.integers(i, min(n, i + 64)))
        kind = draw(st.sampled_from(["delete", "insert", "flip", "duplicate", "replace"]))
        if kind == "delete":
            del data[i:j]
        elif kind == "insert":
            data[i:i] = draw(JUNK_BYTES)
        elif kind == "flip" and i < n:
            data[i] ^= draw(st.integers(1, 255))
        elif kind == "duplicate":
            k = draw(st.integers(0, n))
            data[k:k] = data[i:j]
        elif kind == "replace":
            data[i:j] = draw(JUNK_BYTES)
    return bytes(data)


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "mutant.yaml"


def _check_bytes(path: Path, raw: bytes) -> None:
    path.write_bytes(raw)
    check_compiles_or_spec_error(str(path), raw.decode("utf-8", "backslashreplace"))


@FAST
@given(raw=byte_mutants())
def test_byte_mutations_give_spec_errors(fuzz_file, raw):
    _check_bytes(fuzz_file, raw)


@pytest.mark.slow
@slow_fuzz
@SLOW
@given(raw=byte_mutants(ALL_NAMES))
def test_byte_mutations_give_spec_errors_slow(fuzz_file, raw):
    _check_bytes(fuzz_file, raw)


# ---------------------------------------------------------------------------------------
# structure-level mutations
# ---------------------------------------------------------------------------------------
EXPR_TOKENS = [
    "1", "0", "-1", "2", "64", "0.5", "1e308", "'s'", "\"x\"", "[1, 2]", "[]", "i", "N",
    "width", "classes", "dim", "planes", "stride", "hidden", "table", "x", "input", "image",
    "+", "-", "*", "/", "//", "%", "**", "==", "<", "and", "or", "not", "if", "else", "in",
    "(", ")", "[", "]", ",", ":", "min(", "max(", "abs(", "int(", "float(", "round(",
    "ceil(", "floor(", "len(", "bool(", "shape(", "shape(input)", "shape(image)[1]",
    "__import__", ".", "__class__", "lambda", "true", "none",
]  # fmt: skip
TRICKY_EXPRS = [
    "${10 ** 100000}", "${2 ** 64 ** 64}", "${1e308 * 10}", "${1 // 0}", "${1 % 0}",
    "${float('nan')}", "${float('inf')}", "${int('9' * 30)}", "${int(1e308)}", "${round(1e308)}",
    "${ceil(float('inf'))}", "${[1] * 10}", "${'a' * 10}", "${[0][5]}", "${[0][True]}",
    "${x.__class__}", "${__import__('os')}", "${(lambda: 1)()}", "${[k for k in [1]]}",
    "${min()}", "${max([])}", "${len(1)}", "${round(1.5, 10 ** 9)}", "${shape(nowhere)}",
    "${shape(1)}", "${shape(input)[9]}", "${shape()}", "${'%s' % 1}", "${[1][0:2:0]}",
    "${{}}", "${", "}", "${}", "${ ${1} }", "${-'a'}", "${1 < 'a'}", "${'a' in 1}",
    "${[] + 1}", "${none + 1}", "${true + true}", "${-(-(-(-(-(-(-(-(1))))))))}",
    "${" + "(" * 150 + "1" + ")" * 150 + "}", "${" + "-" * 300 + "1}", "${" + "not " * 90 + "1}",
    "${i}", "${i * 1000000}", "${shape(input)}", "${[1, [2, [3]]]}", "${abs(-2 ** 63)}",
]  # fmt: skip
NAMES = ["x", "image", "tokens", "input", "fc", "conv1", "layer1", "head", "lstm", "lstm[1][0]",
         "attention[0]", "downsample", "fc[0]", "nope", "0", "1", "a.b", "", " "]  # fmt: skip
OPS = ["Linear", "Conv2d", "ReLU", "add", "cat", "flatten", "getitem", "LSTM", "Parameter",
       "expand", "MultiheadAttention", "Embedding", "BatchNorm2d", "Lineer", "Conv2D"]  # fmt: skip
KEYS = ["op", "block", "in", "repeat", "if", "call", "name", "nodes", "blocks", "inputs",
        "outputs", "vars", "params", "include", "shape", "dtype", "<<", "yamlnet",
        "out_features", "kernel_size", "kernal_size", "index", "dim", "size", "i"]  # fmt: skip

random_expr = st.lists(st.sampled_from(EXPR_TOKENS), min_size=1, max_size=8).map(
    lambda toks: "${" + " ".join(toks) + "}"
)
scalar_junk = st.one_of(
    st.text(max_size=20),
    st.sampled_from(NAMES + OPS + KEYS),
    st.integers(-1000, 1000),
    st.sampled_from([0, -1, 2**31, 2**53, 2**53 + 1, 2**63, 10**20, -(10**30), 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    random_expr,
    st.sampled_from(TRICKY_EXPRS),
)
junk = st.recursive(
    scalar_junk,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(KEYS + NAMES[:8]), inner, max_size=4),
    ),
    max_leaves=10,
)


def _paths(value, prefix=()):
    """Every (path, value) inside a loaded YAML tree, the root included."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


NODE_KEYS = ["in", "in", "repeat", "if", "op", "block", "call", "name"]
PARAM_DECLS = ["int", "float", "bool", "str", "list", "dict", "any", "integer", "Int", "banana",
               {"type": "int"}, {"type": "banana"}, {"type": "int", "default": "x"},
               {"default": 1}, {"type": "list", "default": [1]}, []]  # fmt: skip


def _node_names(tree) -> list[str]:
    """Names a reference could use: inputs, nodes (at any depth), block inputs."""
    out = ["input"]
    for path, value in _paths(tree):
        if path and path[-1] in ("nodes", "inputs") and isinstance(value, dict):
            out += [str(k) for k in value]
    return out


@st.composite
def _mutate_node(draw, tree) -> None:
    """Rewire or re-parameterize one node: the edits that reach the later stages."""
    nodes = [v for _, v in _paths(tree) if isinstance(v, dict) and {"op", "block"} & set(v)]
    if not nodes:
        return
    node = draw(st.sampled_from(nodes))
    ref = st.tuples(
        st.sampled_from(_node_names(tree)), st.lists(st.integers(-3, 3), max_size=2)
    ).map(lambda t: t[0] + "".join(f"[{i}]" for i in t[1]))
    key = draw(st.sampled_from(NODE_KEYS + [k for k in node if k not in NODE_KEYS]))
    if key == "in":
        node["in"] = draw(st.one_of(ref, st.lists(ref, min_size=1, max_size=3)))
    elif key == "repeat":
        node["repeat"] = draw(st.one_of(st.integers(-2, 6), st.sampled_from(["${i}", "${-1}"])))
    else:
        node[key] = draw(junk)


@st.composite
def _mutate_params(draw, tree) -> None:
    blocks = tree.get("blocks") if isinstance(tree, dict) else None
    if not isinstance(blocks, dict) or not blocks:
        return
    body = blocks[draw(st.sampled_from(sorted(blocks)))]
    if isinstance(body, dict):
        params = body.setdefault("params", {}) or {}
        if isinstance(params, dict):
            params[draw(st.sampled_from(["width", "planes", "stride", "channels", "p"]))] = draw(
                st.sampled_from(PARAM_DECLS)
            )
            body["params"] = params


@st.composite
def structure_mutants(draw, names=FAST_NAMES) -> str:
    tree = yaml.safe_load(SPEC_TEXT[draw(st.sampled_from(names))])
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p, _ in _paths(tree) if p]
        if not paths:
            break
        focus = draw(st.sampled_from(["anywhere", "node", "node", "params"]))
        if focus == "node":
            draw(_mutate_node(tree))
            continue
        if focus == "params":
            draw(_mutate_params(tree))
            continue
        path = draw(st.sampled_from(paths))
        parent, last = _get(tree, path[:-1]), path[-1]
        kind = draw(st.sampled_from(["value", "value", "value", "key", "delete", "add"]))
        if kind == "value":
            parent[last] = draw(junk)
        elif kind == "delete":
            del parent[last]
        elif kind == "key" and isinstance(parent, dict):
            new = draw(st.one_of(st.sampled_from(KEYS + NAMES), st.text(max_size=10)))
            parent[new] = parent.pop(last)
        elif kind == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS))] = draw(junk)
        elif kind == "add" and isinstance(parent, list):
            parent.insert(draw(st.integers(0, len(parent))), draw(junk))
    text = yaml.safe_dump(tree, sort_keys=False, allow_unicode=True, width=1 << 20)
    return text if "\n" in text else text + "\n"  # compile_spec reads a newline as YAML text


@FAST
@given(text=structure_mutants())
def test_structure_mutations_give_spec_errors(text):
    check_compiles_or_spec_error(text, text)


@pytest.mark.slow
@slow_fuzz
@SLOW
@given(text=structure_mutants(ALL_NAMES))
def test_structure_mutations_give_spec_errors_slow(text):
    check_compiles_or_spec_error(text, text)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_structure_round_trip_of_valid_specs_compiles(name):
    """The structure mutator starts from valid specs: unmutated, they still compile."""
    text = yaml.safe_dump(yaml.safe_load(SPEC_TEXT[name]), sort_keys=False, width=1 << 20)
    compile_spec(text, build=False)


def test_fuzz_inputs_exist():
    assert len(SPEC_FILES) >= 3, "specs/*.yaml should hold the valid specs the fuzzer mutates"
    assert sys.getrecursionlimit() >= 1000
