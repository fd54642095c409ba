"""The safe loader: honest scalars, located values, refused YAML features."""

import pytest
from yamlnet.compiler.errors import LoadError
from yamlnet.compiler.load import load_document, load_spec_source


def load(text: str):
    return load_document(text.encode(), "t.yaml")


def test_scalars_follow_yaml_12_core():
    doc = load("a: 1\nb: -2.5\nc: 1e-3\nd: true\ne: null\nf: '010'\ng: N\nh: 0x1F\ni: ~\nj: y\n")
    assert doc.data == {"a": 1, "b": -2.5, "c": 0.001, "d": True, "e": None, "f": "010",
                        "g": "N", "h": 31, "i": None, "j": "y"}


def test_keys_are_always_strings():
    assert load("0: a\n1: b\nno: c\nnull: d\n").data == {"0": "a", "1": "b", "no": "c", "null": "d"}


def test_locations_of_every_value():
    doc = load("nodes:\n  fc: {op: Linear, out_features: 3}\n")
    assert str(doc.loc(("nodes", "fc", "out_features"))) == "t.yaml:2:20"
    assert str(doc.loc(("nodes", "fc"))) == "t.yaml:2:3"
    assert str(doc.loc(("nodes", "fc", "missing", 0))) == "t.yaml:2:3"  # nearest ancestor


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: no\n", "t.yaml:1:4: 'no' is ambiguous (YAML 1.1 reads it as false) (write false, or quote it as 'no' if you mean the word)"),
        ("a: 010\n", "t.yaml:1:4: '010' is ambiguous (YAML 1.1 reads a leading 0 as octal) (write 10, or quote it as '010')"),
        ("a: 1:30\n", "t.yaml:1:4: '1:30' is ambiguous (YAML 1.1 reads it as a base-60 number)"),
        ("a: 1_000\n", "t.yaml:1:4: '1_000' is ambiguous (YAML 1.1 reads it as a number with underscores)"),
        ("a: .inf\n", "t.yaml:1:4: non-finite number '.inf' is not allowed"),
        ("a: 1e400\n", "t.yaml:1:4: number '1e400' overflows to infinity"),
        ("a: 123456789012345678901234567890\n", "t.yaml:1:4: integer 12345678901234567890... is too large"),
        ("a: !!python/object/apply:os.system ['true']\n", "t.yaml:1:4: YAML tags are not allowed"),
        ("a: !!str 3\n", "YAML tags are not allowed in a spec (found '!!str')"),
        ("a: 1\na: 2\n", "t.yaml:2:1: duplicate key 'a' (first written at line 1)"),
        ("a: 1\n---\nb: 2\n", "t.yaml:2:1: only one YAML document is allowed"),
        ("", "t.yaml:1:1: the spec is empty"),
        ("a: [1, 2\n", "t.yaml:2:1: YAML syntax error"),
        ("a: *nope\n", "t.yaml:1:4: unknown alias *nope"),
        ("a: \x07\n", "t.yaml:1:4: control character U+0007 is not allowed"),
        ("a: x\u202ey\n", "t.yaml:1:5: control character U+202E is not allowed"),
        ("[" * 60 + "]" * 60, "nesting deeper than 48 levels"),
    ],
)
def test_refused(text, message):
    with pytest.raises(LoadError) as info:
        load(text)
    assert str(info.value).startswith(message) or message in str(info.value)
    assert "\n" not in str(info.value)


def test_not_utf8():
    with pytest.raises(LoadError, match=r"t.yaml:2:4: file is not UTF-8 \(byte 0xff"):
        load_document(b"a: 1\nb: \xff\n", "t.yaml")


def test_alias_bomb_is_stopped():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for k in range(1, 9):
        prev = f"*a{k - 1}"
        lines.append(f"a{k}: &a{k} [{', '.join([prev] * 10)}]")
    with pytest.raises(LoadError, match="alias or merge-key bomb"):
        load("\n".join(lines) + "\n")


def test_aliases_and_merge_keys_within_limits():
    doc = load("base: &b {kernel_size: 3, padding: 1}\nconv: {<<: *b, padding: 2}\n")
    assert doc.data["conv"] == {"kernel_size": 3, "padding": 2}


def test_include_cycle_names_the_chain(tmp_path):
    (tmp_path / "a.yaml").write_text("yamlnet: 1\ninclude: b.yaml\nblocks: {}\n")
    (tmp_path / "b.yaml").write_text("yamlnet: 1\ninclude: a.yaml\nblocks: {}\n")
    (tmp_path / "main.yaml").write_text("yamlnet: 1\ninclude: a.yaml\nnodes: {x: {op: ReLU}}\n")
    with pytest.raises(LoadError, match=r"include cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_spec_source(tmp_path / "main.yaml")


def test_diamond_include_loads_each_file_once(tmp_path):
    (tmp_path / "base.yaml").write_text("yamlnet: 1\nblocks: {b: {nodes: {r: {op: ReLU}}}}\n")
    (tmp_path / "l.yaml").write_text("yamlnet: 1\ninclude: base.yaml\n")
    (tmp_path / "r.yaml").write_text("yamlnet: 1\ninclude: base.yaml\n")
    (tmp_path / "m.yaml").write_text("yamlnet: 1\ninclude: [l.yaml, r.yaml]\nnodes: {x: {op: ReLU}}\n")
    src = load_spec_source(tmp_path / "m.yaml")
    assert sorted(d.file.split("/")[-1] for d in src.includes) == ["base.yaml", "l.yaml", "r.yaml"]
