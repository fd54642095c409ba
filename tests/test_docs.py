"""specs/README.md stays true: every checked example validates, or fails with exactly
the error text printed under it; Python files it shows (a plugin) are written beside."""

from __future__ import annotations

import re
import sys

import pytest
from yamlnet.compiler.registry import REGISTRY

from yamlnet.cli import main

from .conftest import SPECS

MARK = re.compile(r"<!-- (spec|file): (\S+)( error)?(?: -- (.*))? -->")


def _blocks() -> tuple[list[tuple], dict[str, str]]:
    lines = (SPECS / "README.md").read_text().splitlines()
    examples, files = [], {}
    for i, line in enumerate(lines):
        if line == "```python" and lines[i + 1].startswith("# ") and lines[i + 1].endswith(".py"):
            end = lines.index("```", i + 1)
            files[lines[i + 1][2:]] = "\n".join(lines[i + 1 : end]) + "\n"
        m = MARK.match(line)
        if not m:
            continue
        kind, name, error, extra = m.groups()
        assert lines[i + 1] == "```yaml", f"README line {i + 2}: a yaml block must follow the mark"
        end = lines.index("```", i + 2)
        body = "\n".join(lines[i + 2 : end]) + "\n"
        if kind == "file":
            files[name] = body
            continue
        expected = None
        if error:
            start = lines.index("```text", end)
            expected = "\n".join(lines[start + 1 : lines.index("```", start + 1)]).strip()
        examples.append((name, body, expected, (extra or "").split()))
    return examples, files


EXAMPLES, FILES = _blocks()


def test_the_reference_has_checked_examples():
    assert len(EXAMPLES) >= 20


@pytest.mark.parametrize("name, body, expected, extra", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example(name, body, expected, extra, tmp_path, monkeypatch, capsys):
    for rel, text in FILES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / name).write_text(body)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(REGISTRY.names())  # loads the built-in ops first
    try:
        rc = main([*extra, "validate", name])
    finally:
        for op in set(REGISTRY._ops) - before:  # ops a plugin example registered
            del REGISTRY._ops[op]
        for mod in [m[:-3] for m in FILES if m.endswith(".py")]:
            sys.modules.pop(mod, None)
    out, err = capsys.readouterr()
    if expected is None:
        assert rc == 0, err
    else:
        assert rc == 2 and err.strip() == expected
