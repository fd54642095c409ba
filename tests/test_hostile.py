"""The hostile/malformed spec catalogue: every file in tests/hostile/ must fail fast with
exactly the one-line, located error listed in tests/hostile/expected.yaml.

Each entry is checked three ways:
- the Python API: `compile_spec(path, build=False)` raises a `SpecError` whose text is
  the expected line, in well under 5 s;
- the CLI in-process: `yamlnet validate PATH` exits 2 and prints that one line, no
  traceback;
- a few entries at once through a real `python -m yamlnet validate` process.

Paths are given relative to the repository root (the tests chdir there), so the expected
texts are stable. Inputs that cannot usefully be committed (a > 1 MiB file) are made here.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from yamlnet.compiler.compile import compile_spec
from yamlnet.compiler.errors import SpecError

from .conftest import Hang, in_child, time_limit

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = ROOT / "tests" / "hostile"
MANIFEST = HOSTILE / "expected.yaml"
CATALOGUE: dict[str, dict] = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
ENTRIES = sorted(CATALOGUE)

# "fails fast", against the regressions these guard (minutes, once 90 s): the slowest entry
# takes about 1 s on an idle machine, and a busy one may be several times slower
FAST_S = 15.0
HANG_S = 60.0  # past this a compile is interrupted (SIGALRM) instead of hanging the suite
CPU_S = 5.0  # CPU seconds the CLI may spend refusing one entry (measured in a child)
EXTRA_MB = 1000  # and memory above what the child started with
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069]")
LOCATED = re.compile(r"^(?P<file>[^:\n]+):(?P<line>[0-9]+):(?P<col>[0-9]+): ")




def rel(name: str) -> str:
    return f"tests/hostile/{name}"


@pytest.fixture(scope="module", autouse=True)
def _warm_up():
    """Import torch and build the op registry once, so timings measure compiling only."""
    compile_spec("yamlnet: 1\ninputs: {x: [N, 8]}\nnodes: {fc: {op: Linear, out_features: 2}}\n",
                 build=False)  # fmt: skip


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def compile_error(source: str) -> tuple[SpecError | None, float]:
    """Compile; return the SpecError (None if it compiled) and the seconds it took.
    Any other exception propagates (and fails the test with its traceback)."""
    start = time.perf_counter()
    try:
        with time_limit(HANG_S):
            compile_spec(source, build=False)
    except SpecError as err:
        return err, time.perf_counter() - start
    except Hang:
        pytest.fail(f"compiling {source} hangs (interrupted after {HANG_S} s)")
    return None, time.perf_counter() - start


# ---------------------------------------------------------------------------------------
# the catalogue itself
# ---------------------------------------------------------------------------------------
def test_catalogue_is_complete():
    """Every file in tests/hostile/ has an entry, every entry a file, and enough of them."""
    files = {p.name for p in HOSTILE.glob("*.yaml")} - {MANIFEST.name}
    assert files == set(CATALOGUE), (
        f"files without an entry: {sorted(files - set(CATALOGUE))}; "
        f"entries without a file: {sorted(set(CATALOGUE) - files)}"
    )
    assert len(CATALOGUE) >= 30
    for name, entry in CATALOGUE.items():
        error = entry["error"]
        assert "\n" not in error, name
        m = LOCATED.match(error)
        assert m and m["file"].startswith("tests/hostile/"), f"{name}: not located: {error}"


@pytest.mark.parametrize("name", ENTRIES)
def test_api_error(name, at_root):
    expected = CATALOGUE[name]["error"]
    err, seconds = compile_error(rel(name))
    assert err is not None, f"{name} compiled, but should fail with:\n  {expected}"
    assert str(err) == expected
    assert len(err.diagnostics) == 1 and "\n" not in str(err), "one problem, one line"
    assert seconds < FAST_S, f"took {seconds:.1f} s"


@pytest.mark.parametrize("name", ENTRIES)
def test_cli_validate_error(name, at_root):
    """`yamlnet validate` in a forked child, measured by the kernel: exit 2, one located
    line, under CPU_S seconds of CPU and EXTRA_MB of memory above what it started with."""
    from yamlnet.cli import main

    path = rel(name)
    child = in_child(main, ["validate", path], limit_s=HANG_S)
    assert child.rc is not None, f"validate {path} hangs (killed after {HANG_S} s)"
    err = child.err
    assert child.rc == 2, f"exit code {child.rc}; stderr: {err}"
    assert "Traceback" not in err and "internal error" not in err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    m = LOCATED.match(lines[0])
    assert m, f"not located (file:line:col): {lines[0]}"
    # the file is the entry itself, or one it includes (include_cycle.yaml)
    assert m["file"].startswith("tests/hostile/"), lines[0]
    expected = LOCATED.match(CATALOGUE[name]["error"])
    assert m.group(0) == expected.group(0), "CLI and API disagree on the location"
    assert not CONTROL.search(err), f"raw control characters in {err!r}"
    assert child.cpu_s < CPU_S, f"took {child.cpu_s:.1f} s of CPU"
    assert child.extra_mb < EXTRA_MB, f"took {child.extra_mb:.0f} MB more memory"
    assert "ok " not in child.out


def test_cli_subprocess_several_files():
    """The real console entry point, several hostile files at once: exit 2, one located
    line each, no traceback."""
    names = ["tag_python_object.yaml", "billion_laughs.yaml", "cycle.yaml", "expr_import.yaml"]
    proc = subprocess.run(
        [sys.executable, "-m", "yamlnet", "validate", *map(rel, names)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines == [CATALOGUE[n]["error"] for n in names]


# ---------------------------------------------------------------------------------------
# inputs made here rather than committed
# ---------------------------------------------------------------------------------------
VALID = "yamlnet: 1\ninputs:\n  x: [N, 8]\nnodes:\n  fc: {op: Linear, out_features: 4}\n"
MIB = 1 << 20


def _oversized() -> str:
    # A valid spec padded past 1 MiB with comment lines: only the size is wrong.
    line = "# " + "padding " * 12 + "\n"
    return VALID + line * (MIB // len(line) + 1)


def test_oversized_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("oversized.yaml").write_text(_oversized(), encoding="utf-8")
    size = Path("oversized.yaml").stat().st_size
    assert size > MIB
    err, seconds = compile_error("oversized.yaml")
    assert str(err) == f"oversized.yaml:1:1: file is {size} bytes; the limit is {MIB}"
    assert seconds < FAST_S


def test_oversized_text():
    err, seconds = compile_error(_oversized())
    assert str(err) == f"<spec>:1:1: spec is over {MIB} bytes"
    assert seconds < FAST_S


def test_oversized_include(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("big.yaml").write_text(_oversized(), encoding="utf-8")
    size = Path("big.yaml").stat().st_size
    Path("main.yaml").write_text("yamlnet: 1\ninclude: [big.yaml]\n" + VALID[11:], encoding="utf-8")
    err, seconds = compile_error("main.yaml")
    assert str(err) == f"main.yaml:2:11: file is {size} bytes; the limit is {MIB}"
    assert seconds < FAST_S


def test_cli_oversized_file(tmp_path, monkeypatch, capsys):
    from yamlnet.cli import main

    monkeypatch.chdir(tmp_path)
    Path("oversized.yaml").write_text(_oversized(), encoding="utf-8")
    assert main(["validate", "oversized.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("oversized.yaml:1:1: ")
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------
# stress that is legal: must compile, or fail with a SpecError, and quickly
# ---------------------------------------------------------------------------------------
def test_shape_query_after_a_long_chain():
    """shape() of a node at the end of a long chain is not a deeply nested expression;
    it must not hit Python's recursion limit (now: "expression '${shape(chain)[1]}' is
    nested too deeply")."""
    text = VALID.replace(
        "  fc: {op: Linear, out_features: 4}\n",
        "  chain: {op: ReLU, repeat: 2000}\n"
        '  fc: {op: Linear, out_features: "${shape(chain)[1] // 2}"}\n',
    )
    err, seconds = compile_error(text)
    assert err is None, str(err)
    assert seconds < FAST_S * 2


def test_repeat_at_the_node_limit_is_fast():
    """repeat: exactly at the expansion limit is accepted or refused, but either way
    quickly: a spec of a few lines must not take minutes (now ~90 s for 100000 nodes)."""
    from yamlnet.compiler.expand import LIMITS

    limit = LIMITS["max_nodes"]
    text = VALID.replace("  fc: {op: Linear, out_features: 4}\n",
                         f"  chain: {{op: ReLU, repeat: {limit}}}\n")  # fmt: skip
    start = time.perf_counter()
    try:
        with time_limit(FAST_S * 2):
            compile_spec(text, build=False)
    except SpecError:
        pass
    except Hang:
        pytest.fail(f"repeat: {limit} ReLU nodes did not compile or fail in {FAST_S * 2} s")
    assert time.perf_counter() - start < FAST_S * 2


def test_nested_repeat_bomb_is_fast():
    """Repeats multiply through nested blocks (50**4 nodes): must stop at the limit."""
    text = VALID.replace(
        "  fc: {op: Linear, out_features: 4}\n", "  body: {block: l1, repeat: 50}\n"
    )
    text += "blocks:\n"
    for k in (1, 2, 3):
        text += f"  l{k}:\n    nodes:\n      inner: {{block: l{k + 1}, repeat: 50}}\n"
    text += "  l4:\n    nodes:\n      act: {op: ReLU, repeat: 50}\n"
    err, seconds = compile_error(text)
    assert err is not None and "spec expands to more than" in str(err), str(err)
    assert LOCATED.match(str(err))
    assert seconds < FAST_S
