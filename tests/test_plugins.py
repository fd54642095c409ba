"""User ops: registered by a plugin module (--plugin) or an entry point; never by a spec."""

import sys
import textwrap

import pytest
import torch
from yamlnet.compiler.errors import PluginError
from yamlnet.compiler.registry import REGISTRY

import yamlnet
from yamlnet.cli import main

SPEC = textwrap.dedent("""
    yamlnet: 1
    inputs: {x: [N, 4]}
    nodes:
      fc: {op: Linear, out_features: 6}
      scale: {op: TestScale, factor: 3.0}
""").lstrip()


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    (tmp_path / "my_ops.py").write_text(textwrap.dedent("""
        import torch
        import yamlnet

        class Scale(torch.nn.Module):
            def __init__(self, factor: float = 2.0):
                super().__init__()
                self.factor = factor

            def forward(self, x):
                return x * self.factor

        if "TestScale" not in yamlnet.compiler.REGISTRY:
            yamlnet.register_op("TestScale", Scale)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_ops"
    sys.modules.pop("my_ops", None)
    REGISTRY._ops.pop("TestScale", None)


def test_plugin_op_compiles_with_its_signature_checked(plugin_module, tmp_path, capsys):
    path = tmp_path / "net.yaml"
    path.write_text(SPEC)
    assert main(["validate", str(path)]) == 2  # unknown op before the plugin is loaded
    assert "unknown op 'TestScale'" in capsys.readouterr().err
    assert main(["--plugin", plugin_module, "validate", str(path)]) == 0
    m = yamlnet.compile(path)
    x = torch.randn(2, 4)
    assert torch.allclose(m(x), m.fc(x) * 3.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.replace("factor", "facter"))
    assert main(["validate", str(bad)]) == 2
    assert "unknown argument 'facter' for TestScale (did you mean factor?)" in capsys.readouterr().err


def test_plugin_cannot_shadow_a_builtin_op():
    with pytest.raises(PluginError, match="'Linear' is already registered"):
        yamlnet.register_op("Linear", torch.nn.Identity)


def test_bad_plugin_module_is_a_user_error(capsys):
    assert main(["--plugin", "no_such_module_xyz", "schema"]) == 2
    assert "cannot load plugin 'no_such_module_xyz'" in capsys.readouterr().err


def test_entry_point_plugins_are_loaded(monkeypatch):
    import importlib.metadata as md

    from yamlnet.compiler import registry as reg

    calls = []

    class EP:
        name, value = "demo", "demo:register"

        def load(self):
            return lambda r: calls.append(r) or yamlnet.register_op("EpIdentity", torch.nn.Identity)

    monkeypatch.setattr(md, "entry_points", lambda group: [EP()] if group == "yamlnet.ops" else [])
    monkeypatch.setattr(REGISTRY, "_plugins_loaded", False)
    try:
        assert "EpIdentity" in REGISTRY and calls == [REGISTRY]
    finally:
        REGISTRY._ops.pop("EpIdentity", None)
    assert reg.REGISTRY is REGISTRY


def test_a_spec_cannot_name_python_code():
    text = "yamlnet: 1\ninputs: {x: [N, 4]}\nnodes:\n  a: {op: os.system}\n"
    with pytest.raises(yamlnet.SpecError, match="is not a valid name here"):
        yamlnet.compile(text)
