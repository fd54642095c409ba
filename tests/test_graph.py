"""`yamlnet graph`: DOT and Mermaid text for every spec, checked for structure (a box per
node, an edge per tensor, a cluster per block instance), pictures through Graphviz
(SVG nodes counted), `--depth` collapsing blocks, and a plain error without Graphviz."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET

import pytest
from yamlnet.compiler.compile import compile_spec
from yamlnet.compiler.draw import drawing, shape_text, to_dot, to_mermaid

from yamlnet.cli import main

from .conftest import SPECS, all_specs

HAVE_DOT = shutil.which("dot") is not None


def expected(result) -> tuple[int, int, set[str]]:
    """Boxes (inputs, ops, outputs), edges (distinct node pairs, plus one per output),
    and cluster paths (every dotted prefix of a node name)."""
    g = result.graph
    boxes = g.number_of_nodes() + len(result.spec.outputs)
    edges = len(set(g.edges)) + len(result.spec.outputs)
    clusters = {".".join(n.split(".")[:k]) for n in g.nodes for k in range(1, n.count(".") + 1)}
    return boxes, edges, clusters


@pytest.mark.parametrize("path", all_specs(), ids=lambda p: p.name)
def test_dot_and_mermaid_structure(path):
    result = compile_spec(path, build=False)
    boxes, edges, clusters = expected(result)
    dot = to_dot(drawing(result))
    assert len(re.findall(r"^\s+n\d+ \[label=", dot, re.M)) == boxes
    assert len(re.findall(r"^\s+n\d+ -> n\d+;$", dot, re.M)) == edges
    assert set(re.findall(r'subgraph "cluster_([^"]+)"', dot)) == clusters
    mermaid = to_mermaid(drawing(result))
    lines = mermaid.splitlines()
    assert lines[0] == "flowchart TB"
    assert len(re.findall(r"^\s+n\d+[\[(]", mermaid, re.M)) == boxes
    assert len(re.findall(r"^\s+n\d+ --> n\d+$", mermaid, re.M)) == edges
    opened = [line for line in lines if line.strip().startswith("subgraph ")]
    assert len(opened) == len(clusters) == sum(line.strip() == "end" for line in lines)
    ids = re.findall(r"^\s+(n\d+)[\[(]", mermaid, re.M)
    assert len(ids) == len(set(ids))


def test_resnet18_shows_shapes_skips_and_blocks():
    result = compile_spec(SPECS / "resnet18.yaml", build=False)
    d = drawing(result)
    assert d.boxes["layer1.0.conv1"].lines == ["conv1", "Conv2d", "N×64×56×56"]
    assert d.boxes["layer1.0.add"].lines == ["add", "N×64×56×56"]  # op named like the node: once
    # the skip: the block's input goes straight to its add as well as to conv1
    assert ("maxpool", "layer1.0.add") in d.edges and ("maxpool", "layer1.0.conv1") in d.edges
    assert ("layer1",) in d.clusters and ("layer1", "0") in d.clusters


def test_depth_collapses_blocks():
    result = compile_spec(SPECS / "resnet18.yaml", build=False)
    d = drawing(result, depth=1)
    blocks = [b for b in d.boxes.values() if b.kind == "block"]
    assert len(blocks) == 8 and len(d.boxes) == 1 + 4 + 8 + 3 + 1
    assert d.boxes["layer2.0"].lines == ["0", "9 nodes", "N×128×28×28"]  # with its downsample
    assert ("layer1.1", "layer2.0") in d.edges and d.clusters == [("layer1",), ("layer2",), ("layer3",), ("layer4",)]
    top = drawing(result, depth=0)
    assert [b.lines[0] for b in top.boxes.values() if b.kind == "block"] == ["layer1", "layer2", "layer3", "layer4"]


def test_symbolic_dims_are_kept():
    assert shape_text(compile_spec(SPECS / "lstm_classifier.yaml", build=False).graph.nodes["embedding"]["type"]) \
        == "N×T×64"  # fmt: skip


@pytest.mark.skipif(not HAVE_DOT, reason="Graphviz's dot is not installed")
@pytest.mark.parametrize("path", all_specs(), ids=lambda p: p.name)
def test_svg_has_a_node_per_box(path, tmp_path, capsys):
    out = tmp_path / "g.svg"
    assert main(["graph", str(path), "-o", str(out)]) == 0
    svg = ET.parse(out).getroot()
    nodes = [g for g in svg.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "node"]
    assert len(nodes) == expected(compile_spec(path, build=False))[0]


@pytest.mark.skipif(not HAVE_DOT, reason="Graphviz's dot is not installed")
@pytest.mark.parametrize("fmt, magic", [("png", b"\x89PNG"), ("pdf", b"%PDF")])
def test_pictures(tmp_path, capsys, fmt, magic):
    out = tmp_path / f"r18.{fmt}"
    assert main(["graph", str(SPECS / "resnet18.yaml"), "--depth", "1", "-o", str(out)]) == 0
    assert out.read_bytes()[:4] == magic


def test_text_to_stdout_and_files(tmp_path, capsys):
    assert main(["graph", str(SPECS / "mlp.yaml"), "--format", "mermaid"]) == 0
    assert capsys.readouterr().out.startswith("flowchart TB\n")
    assert main(["graph", str(SPECS / "mlp.yaml"), "-o", str(tmp_path / "m.mmd")]) == 0
    assert (tmp_path / "m.mmd").read_text().startswith("flowchart TB\n")
    assert capsys.readouterr().out == f"wrote {tmp_path / 'm.mmd'}\n"
    assert main(["graph", str(SPECS / "mlp.yaml")]) == 0
    assert capsys.readouterr().out.startswith('digraph "mlp" {')


def test_without_graphviz_a_picture_is_one_plain_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot here
    assert main(["graph", str(SPECS / "mlp.yaml"), "-o", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Graphviz's `dot` program is not installed") and "apt install graphviz" in err
    assert main(["graph", str(SPECS / "mlp.yaml"), "--format", "dot"]) == 0  # text needs nothing
    assert main(["graph", str(SPECS / "mlp.yaml"), "-o", str(tmp_path / "m.xyz")]) == 2
