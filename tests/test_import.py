"""`yamlnet import`: a traced nn.Module written as a spec, compiled back and compared
with the module itself (same state_dict keys with strict loading, same outputs)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from yamlnet.compiler.importer import ImportFailure, import_module

import yamlnet

ROOT = Path(__file__).resolve().parents[1]


def round_trip(module: nn.Module, text: str, *examples) -> float:
    """Compile `text`, load the module's weights strictly, return the max output diff."""
    built = yamlnet.compile(text)
    built.load_state_dict(module.state_dict(), strict=True)
    assert list(built.state_dict()) == list(module.state_dict()) or sorted(
        built.state_dict()
    ) == sorted(module.state_dict())
    module.eval(), built.eval()
    with torch.no_grad():
        want, got = module(*examples), built(*examples)
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, tuple) else (got,)
    assert len(want) == len(got)
    return max(float((a - b).abs().max()) for a, b in zip(want, got, strict=True))


def imported(module, *inputs, **kw):
    return import_module(module, [(None, list(shape), dtype) for shape, dtype in inputs], **kw)


def test_resnet18_reads_like_the_hand_written_spec(tmp_path):
    out = tmp_path / "resnet18.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "yamlnet", "import", "torchvision.models:resnet18",
         "--input", "x=[N,3,224,224]", "-o", str(out)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "max abs diff 0 at N=3" in proc.stdout
    text = out.read_text()
    hand = (ROOT / "specs" / "resnet18.yaml").read_text()
    assert len(text.splitlines()) <= 2 * len(hand.splitlines())
    # the structure a person writes: one block, stages as repeats with i-dependent stride
    assert "  basic_block:\n" in text and text.count("block: basic_block, repeat: 2") == 4
    assert 'stride: "${2 if i == 0 else 1}"' in text and 'if: "${use_downsample}"' in text
    model = torchvision.models.resnet18()
    torch.manual_seed(0)
    assert round_trip(model, str(out), torch.randn(3, 3, 224, 224)) == 0.0  # batch 3: N is symbolic


def test_mobilenet_v2_residuals_become_one_block_with_an_optional_add():
    model = torchvision.models.mobilenet_v2()
    r = imported(model, ([("N"), 3, 64, 64], "float32"), name="mobilenet_v2")
    assert r.max_abs_diff == 0.0
    assert 'add:  {op: add, in: [conv, input], if: "${use_add}"}' in r.text
    assert r.parameters == sum(p.numel() for p in model.parameters())
    assert round_trip(model, r.text, torch.randn(2, 3, 64, 64)) == 0.0


@pytest.mark.parametrize("name", ["efficientnet_b0", "densenet121", "mobilenet_v3_small", "squeezenet1_0",
                                  "shufflenet_v2_x0_5"])  # fmt: skip
def test_torchvision_families_round_trip(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)()
    r = imported(model, (["N", 3, 64, 64], "float32"), name=name)
    assert r.max_abs_diff == 0.0
    assert round_trip(model, r.text, torch.randn(2, 3, 64, 64)) == 0.0


@pytest.mark.parametrize("version", [1, 2])
def test_swin_attention_and_patch_merging_stay_one_op_each(version):
    from torchvision.models import swin_transformer as swin

    torch.manual_seed(0)
    v2 = {"block": swin.SwinTransformerBlockV2, "downsample_layer": swin.PatchMergingV2} if version == 2 else {}
    model = swin.SwinTransformer([4, 4], 16, [2, 2], [2, 4], [4, 4], num_classes=10, **v2)
    r = imported(model, (["N", 3, 32, 32], "float32"), name="swin")
    assert r.max_abs_diff == 0.0
    suffix = "V2" if version == 2 else ""
    assert f"{{op: ShiftedWindowAttention{suffix}, window_size: [4, 4]" in r.text
    assert f'"2": {{op: PatchMerging{suffix}}}' in r.text
    assert round_trip(model, r.text, torch.randn(2, 3, 32, 32)) == 0.0


def test_vision_transformer_with_class_token_and_sizes_from_forward():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    r = imported(model, (["N", 3, 32, 32], "float32"), name="vit")
    assert "class_token: {op: Parameter, shape: [1, 1, 16]}" in r.text
    assert '- {name: "encoder_layer_${i}", block: encoder_block, repeat: 2}' in r.text  # torchvision's names
    assert "size: [N, -1, -1]" in r.text and "shape: [N, 16, 16]" in r.text  # x.shape[0] is N
    assert round_trip(model, r.text, torch.randn(5, 3, 32, 32)) == 0.0


USER = '''
import torch
from torch import nn
import torch.nn.functional as F


class Down(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(F.relu(self.bn(self.conv(x))))


class Net(nn.Module):
    def __init__(self, width=8, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.down1 = Down(width, width * 2)
        self.down2 = Down(width * 2, width * 2)
        self.proj = nn.Conv2d(width * 2, width * 2, 1)
        self.head = nn.Linear(width * 2 * 8 * 8, classes)

    def forward(self, x):
        x = self.stem(x)
        y = self.down1(x)
        z = self.down2(y)
        z = z + self.proj(F.max_pool2d(y, 2))          # a skip connection
        return self.head(z.view(z.size(0), -1))


class Seq2Seq(nn.Module):
    """Two int64 inputs of their own lengths, two outputs, a state handed over."""

    def __init__(self, vocab=20, hidden=16):
        super().__init__()
        self.src = nn.Embedding(vocab, hidden)
        self.tgt = nn.Embedding(vocab, hidden)
        self.encoder = nn.GRU(hidden, hidden, batch_first=True)
        self.decoder = nn.GRU(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, source, target):
        _, state = self.encoder(self.src(source))
        dec, last = self.decoder(self.tgt(target), state)
        return self.out(dec), last


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.size(-1) > 2:  # fx cannot follow this branch (meta tensors can)
            return self.fc(x)
        return x


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.inner = Gate()

    def forward(self, x):
        return self.inner(self.fc(x))


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.fc(x))


class Odd(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.cumsum(self.fc(x), 1)


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.spare = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x)
'''


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    path = folder / "nets.py"
    path.write_text(textwrap.dedent(USER))
    spec = importlib.util.spec_from_file_location("user_nets_oracle", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return folder, mod


@pytest.fixture
def cli(user, capsys, monkeypatch):
    """`yamlnet ...` in this process (a fresh process is tested with resnet18 above)."""
    from types import SimpleNamespace

    from yamlnet.cli import main

    folder, _ = user
    monkeypatch.chdir(folder)

    def run(*args):
        code = main(list(args))
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return run


def test_user_module_with_a_skip_from_a_file_with_constructor_args(user, cli):
    folder, mod = user
    proc = cli(
        "import", "nets.py:Net", "--arg", "width=4", "--input", "[N,3,32,32]", "-o", "net.yaml"
    )
    assert proc.returncode == 0, proc.stderr
    text = (folder / "net.yaml").read_text()
    assert (
        "down1:      {block: down}" in text and "add:        {op: add, in: [down2, proj]}" in text
    )
    assert "view:       {op: view, shape: [N, -1]}" in text  # z.size(0) is the batch
    torch.manual_seed(1)
    model = mod.Net(width=4)
    assert round_trip(model, str(folder / "net.yaml"), torch.randn(5, 3, 32, 32)) == 0.0


def test_recurrent_model_with_two_inputs_and_two_outputs(user):
    _, mod = user
    torch.manual_seed(0)
    model = mod.Seq2Seq()
    r = import_module(model, [("source", ["N", "S"], "int64"), ("target", ["N", "T"], "int64")])
    assert "source: {shape: [N, S], dtype: int64}" in r.text
    assert 'outputs: {output_0: out, output_1: "decoder[1]"}' in r.text
    src, tgt = torch.randint(0, 20, (3, 7)), torch.randint(0, 20, (3, 4))
    assert round_trip(model, r.text, src, tgt) == 0.0


@pytest.mark.parametrize("target, message", [
    ("nets.py:Branchy", "error: cannot trace Branchy in submodule 'inner' (Gate): its forward branches or "
                        "loops on a traced value"),
    ("nets.py:Shared", "error: 'fc' is used twice (shared weights)"),
    ("nets.py:Odd", "error: torch.cumsum: has no yamlnet op"),
    ("nets.py:Unused", "error: forward never uses spare.weight, spare.bias"),
    ("nets.py:Nope", "error: nets.py has no attribute 'Nope'"),
    ("missing_module:Net", "error: cannot import missing_module: ModuleNotFoundError"),
    ("nets.py", "error: 'nets.py' is not MODULE:ATTR"),
])  # fmt: skip
def test_what_cannot_be_imported_is_one_line_and_exit_2(cli, target, message):
    proc = cli("import", target, "--input", "[N,4]")
    assert proc.returncode == 2
    assert proc.stderr.startswith(message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_a_plugin_op_stays_one_node_where_tracing_cannot_go(user):
    folder, _ = user
    (folder / "gate_ops.py").write_text(
        "import yamlnet\nfrom nets import Gate\nyamlnet.register_op('Gate', Gate)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "yamlnet", "--plugin", "gate_ops", "import", "nets:Branchy", "--input", "[N,4]",
         "-o", "branchy.yaml"],
        capture_output=True, text=True, cwd=folder,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = (folder / "branchy.yaml").read_text()
    assert text.startswith(
        "# Written by `yamlnet --plugin gate_ops import nets:Branchy --input [N,4]`."
    )
    assert "inner: {op: Gate}" in text


def test_command_line_mistakes(user, cli):
    folder, _ = user
    (folder / "taken.yaml").write_text("yamlnet: 1\n")
    cases = [
        (
            ["nets.py:Net"],
            "error: give each input of Net.forward(x) a shape (--input x=[N,3,224,224])",
        ),
        (["nets.py:Net", "--input", "[N,3,32"], "error: --input '[N,3,32': expected a shape"),
        (["nets.py:Net", "--input", "y=[N,3,32,32]"], "error: Net.forward(x) has no input 'y'"),
        (["nets.py:Net", "--input", "[N,3,32,32]", "-o", "taken.yaml"], "error: taken.yaml exists"),
        (
            ["nets.py:Net", "--arg", "widht=4", "--input", "[N,3,32,32]"],
            "error: nets.py:Net(...) raised TypeError",
        ),
        (
            ["nets.py:Net", "--input", "[N,2,32,32]"],
            "error: the module fails on inputs of the given shapes",
        ),
    ]
    for args, message in cases:
        proc = cli("import", *args)
        assert proc.returncode == 2 and proc.stderr.startswith(message), (args, proc.stderr)
    assert (folder / "taken.yaml").read_text() == "yamlnet: 1\n"


def test_import_failure_is_a_spec_error():
    with pytest.raises(ImportFailure, match="give each input"):
        import_module(nn.Sequential(nn.Linear(3, 3)), [])
    with pytest.raises(
        ImportFailure, match=r"Linear is itself a layer: write \{op: Linear, ...\} in a spec"
    ):
        import_module(nn.Linear(3, 3), [(None, ["N", 3], "float32")])
    assert issubclass(ImportFailure, yamlnet.SpecError)


# ---- the corners: each module here once made a wrong spec or an internal error ---------------
class _Sizes(nn.Module):
    """Sizes read in forward: the batch, a symbolic length, and a constant."""

    def __init__(self):
        super().__init__()
        self.q, self.k = nn.Linear(4, 16), nn.Linear(4, 16)

    def forward(self, src, tgt):
        q = self.q(tgt)
        heads = q.view(q.size(0), q.size(1), 4, 4)  # [N, T, 4, 4]: T, not S
        scale = q.size(-1) ** -0.5  # a constant
        return heads * scale, self.k(src).reshape(src.shape[0], -1, 8)


class _Stage(nn.Module):
    def __init__(self, widths):
        super().__init__()
        self.blocks = nn.Sequential(*[nn.Linear(4, w) if k == 0 else nn.Linear(widths[k - 1], w)
                                      for k, w in enumerate(widths)])  # fmt: skip

    def forward(self, x):
        return self.blocks(x)


class _Stages(nn.Module):
    """One class whose instances differ along their repeats, and in repeat length."""

    def __init__(self):
        super().__init__()
        self.a = _Stage([8, 8])
        self.b = _Stage([6, 8, 5])
        self.drop = nn.Sequential(*[nn.Dropout(k / 100) for k in range(80)])  # a long list along i

    def forward(self, x):
        return self.a(x), self.b(x), self.drop(x)


class _Rec(nn.Module):
    """A class that contains itself."""

    def __init__(self, depth):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.inner = _Rec(depth - 1) if depth else None

    def forward(self, x):
        y = self.fc(x)
        return self.inner(y) + y if self.inner is not None else y


class _Named(nn.Module):
    """An input named like a layer, and a functional add beside an input named add."""

    def __init__(self):
        super().__init__()
        self.query = nn.Linear(4, 4)

    def forward(self, query, add):
        return self.query(query) + add


@pytest.mark.parametrize("module, inputs, expect", [
    (_Sizes(), [("src", ["N", "S", 4]), ("tgt", ["N", "T", 4])],
     ["view:    {op: view, shape: [N, T, 4, 4]}", "mul:     {op: mul, other: 0.25}",
      "reshape: {op: reshape, shape: [N, -1, 8]}"]),
    (_Stages(), [("x", ["N", 4])], ["{block: _stage, in: x, blocks_depth: 3, out_features: [6, 8, 5]}",
                                    'blocks: {op: Linear, repeat: "${blocks_depth}", out_features: "${out_features[i]}"}',
                                    "drop_p: [0.0, 0.01, 0.02,", 'p: "${drop_p[i]}"']),
    (_Rec(2), [("x", ["N", 4])], ["_rec:", "_rec_2:"]),
    (_Named(), [("query", ["N", 4]), ("add", ["N", 4])], ["query_in: [N, 4]", "add_1: {op: add, in: [query, add]}"]),
])  # fmt: skip
def test_corners_round_trip(module, inputs, expect):
    torch.manual_seed(0)
    r = import_module(module, [(n, shape, "float32") for n, shape in inputs])
    for line in expect:
        assert line in r.text, r.text
    sizes = {"N": 5, "S": 6, "T": 7}
    examples = [torch.randn([sizes.get(d, d) for d in shape]) for _, shape in inputs]
    assert round_trip(module, r.text, *examples) == 0.0


class _FloorDiv(nn.Module):
    def forward(self, x):
        return x.reshape(x.size(0), x.size(1) // 2, -1)


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.out = nn.Linear(4, 4), nn.Linear(4, 4)
        self.out.weight = self.emb.weight

    def forward(self, x):
        return self.out(self.emb(x))


class _Size(nn.Module):
    def forward(self, x):
        return x * 2, x.size(0)


@pytest.mark.parametrize("module, message", [
    (_FloorDiv(), "Tensor.reshape: computes a number from the symbolic dims (operator.floordiv)"),
    (_Tied(), "'emb.weight' and 'out.weight' are one tensor (tied weights)"),
    (_Size(), "forward returns a number as output_1"),
    (nn.Sequential(nn.Hardtanh(min_val=float("-inf"))), "argument 'min_val' of '0' (Hardtanh) cannot be written"),
])  # fmt: skip
def test_corners_refused(module, message):
    with pytest.raises(ImportFailure) as err:
        import_module(module, [(None, ["N", "T"], "float32")])
    assert str(err.value).startswith(message), str(err.value)


# ---- blockers found by importing every torchvision model (tests/test_import_sweep.py) ----------
def test_regnet_names_with_a_dash_are_written_quoted():
    torch.manual_seed(0)
    model = torchvision.models.regnet_x_400mf()
    r = imported(model, (["N", 3, 32, 32], "float32"), name="regnet")
    assert '"block1-0": {block: res_bottleneck_block' in r.text  # the name kept: a state_dict key
    assert r.max_abs_diff == 0.0
    assert round_trip(model, r.text, torch.randn(2, 3, 32, 32)) == 0.0


class _Conv3x3(nn.Conv2d):
    """A subclass that only computes its base's arguments (torchvision's Conv3DSimple)."""

    def __init__(self, channels: int, stride: int = 1):
        super().__init__(channels, channels, kernel_size=3, stride=stride, padding=1, bias=False)

    @staticmethod
    def get_downsample_stride(stride: int) -> tuple:
        return stride, stride


class _OwnForward(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) * 2


def test_a_layer_subclass_without_its_own_forward_is_its_base_op():
    torch.manual_seed(0)
    model = nn.Sequential(_Conv3x3(4, stride=2), nn.ReLU())
    r = imported(model, (["N", 4, 8, 8], "float32"))
    assert "- {op: Conv2d, out_channels: 4, kernel_size: 3, stride: 2, padding: 1, bias: false}" in r.text
    assert round_trip(model, r.text, torch.randn(2, 4, 8, 8)) == 0.0
    video = torchvision.models.video.r3d_18()  # Conv3DSimple(nn.Conv3d)
    r = imported(video, (["N", 3, 4, 32, 32], "float32"))
    assert "{op: Conv3d, out_channels: \"${out_channels}\", kernel_size: 3" in r.text
    assert round_trip(video, r.text, torch.randn(2, 3, 4, 32, 32)) == 0.0
    with pytest.raises(ImportFailure, match=r"torch.conv2d \(in 0: _OwnForward\): has no yamlnet op"):
        imported(nn.Sequential(_OwnForward(4, 4, 3)), (["N", 4, 8, 8], "float32"))


class _Fused(nn.Module):
    """EfficientNetV2's FusedMBConv: padding [1, 0] and activation [true, false] along a repeat."""

    def __init__(self, depth: int):
        from torchvision.ops import Conv2dNormActivation

        super().__init__()
        layers = [Conv2dNormActivation(4, 8 if depth == 2 else 4, 3)]
        if depth == 2:
            layers.append(Conv2dNormActivation(8, 4, 1, activation_layer=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        return self.block(x) + x


def test_a_flag_is_never_merged_with_an_int_that_equals_it():
    torch.manual_seed(0)
    model = nn.Sequential(_Fused(1), _Fused(2), _Fused(2))
    r = imported(model, (["N", 4, 8, 8], "float32"))
    assert 'use_2: "${use_2[i]}"' in r.text and 'use_2: "${padding[i]}"' not in r.text
    assert round_trip(model, r.text, torch.randn(2, 4, 8, 8)) == 0.0


@torch.fx.wrap
def _clip_window(window: list, size) -> tuple:
    for k in range(2):  # changes the list it is given, as swin3d's helpers do
        window[k] = min(window[k], size[k])
    return tuple(window)


class _Windows(nn.Module):
    def forward(self, x):
        window = _clip_window([7, 7], x.shape[-2:])  # fx passes [7, 7] as an immutable list
        return nn.functional.avg_pool2d(x, window)


def test_model_code_gets_lists_it_can_change():
    r = imported(_Windows(), (["N", 3, 4, 4], "float32"))
    assert "{op: AvgPool2d, kernel_size: 4}" in r.text  # a size from forward that is constant
    assert round_trip(_Windows(), r.text, torch.randn(2, 3, 4, 4)) == 0.0


def plugin_swish(x, beta=1.0):  # public: fx wraps no name that starts with _
    return x * torch.sigmoid(beta * x)


class _Swished(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return plugin_swish(self.fc(x), 2.0)


def test_a_plugin_function_is_one_node():
    from yamlnet.compiler.registry import REGISTRY

    yamlnet.register_op("test_import_swish", plugin_swish, args={"beta": {"type": "number"}})
    try:
        torch.manual_seed(0)
        model = _Swished()
        r = imported(model, (["N", 4], "float32"))
        assert "test_import_swish: {op: test_import_swish, beta: 2.0}" in r.text
        assert round_trip(model, r.text, torch.randn(3, 4)) == 0.0
    finally:
        REGISTRY._ops.pop("test_import_swish", None)


class _Encoder(nn.Module):
    def __init__(self, norm: bool):
        super().__init__()
        self.embed = nn.Linear(4, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 3, norm=nn.LayerNorm(16) if norm else None,
                                             enable_nested_tensor=False)  # fmt: skip
        self.last = nn.TransformerEncoderLayer(16, 4, 24, 0.0, "gelu", 1e-6, True, True, False)

    def forward(self, x):
        return self.last(self.encoder(self.embed(x)))


@pytest.mark.parametrize("norm", [True, False])
def test_transformer_encoder_is_a_repeat_of_its_layers(norm):
    torch.manual_seed(0)
    model = _Encoder(norm)
    r = imported(model, (["N", "T", 4], "float32"))
    assert ("layers: {op: TransformerEncoderLayer, repeat: 3, nhead: 2, dim_feedforward: 32, "
            "activation: relu, batch_first: true}") in r.text  # fmt: skip
    assert ("last:    {op: TransformerEncoderLayer, nhead: 4, dim_feedforward: 24, dropout: 0.0, "
            "activation: gelu, layer_norm_eps: 1e-06, batch_first: true, norm_first: true, bias: false}"
            ) in r.text  # fmt: skip
    assert ("norm:   {op: LayerNorm}" in r.text) == norm
    assert round_trip(model, r.text, torch.randn(2, 5, 4)) < 1e-5
    with pytest.raises(ImportFailure, match="TransformerEncoder can be imported inside a module"):
        imported(model.encoder, (["N", "T", 16], "float32"))


class _IntShape(nn.Module):
    def forward(self, x):
        return x.reshape(x[0, 0] + 2, -1)


def test_refusals_name_the_module_path_not_fx_nodes():
    model = nn.Sequential(nn.Identity(), _IntShape())
    with pytest.raises(ImportFailure) as err:
        imported(model, (["N", 4], "int64"))
    assert str(err.value).startswith("Tensor.reshape (in 1: _IntShape): uses a tensor "
                                     "(operator.add in '1') where a number is expected")  # fmt: skip


class _Branches(nn.Module):
    """deeplabv3's ASPP: a ModuleList of parallel branches, joined after it."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(4, 2, 3, padding=d, dilation=d) for d in (1, 2, 3)])
        self.project = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


def test_a_container_of_parallel_branches_is_a_block_with_several_outputs():
    torch.manual_seed(0)
    model = _Branches()
    r = imported(model, (["N", 4, 8, 8], "float32"))
    assert "convs:   {block: module_list}" in r.text
    assert 'outputs: ["0", "1", "2"]' in r.text
    assert round_trip(model, r.text, torch.randn(2, 4, 8, 8)) == 0.0


class _Einsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return torch.einsum("bik,bjk->bij", self.q(x), self.k(x))


class _Constant(nn.Module):
    def forward(self, x):
        return x * torch.tensor([1.0, 2.0])


def test_einsum_and_a_constant_tensor_made_in_forward():
    torch.manual_seed(0)
    r = imported(_Einsum(), (["N", "T", 4], "float32"))
    assert 'einsum: {op: einsum, in: [q, k], equation: "bik,bjk->bij"}' in r.text
    assert round_trip(_Einsum(), r.text, torch.randn(2, 5, 4)) < 1e-6
    with pytest.raises(ImportFailure) as err:
        imported(nn.Sequential(_Constant()), (["N", 2], "float32"))
    assert str(err.value).startswith("forward of '0' (_Constant) uses a constant tensor (made in "
                                     "forward, or a plain attribute)")  # fmt: skip


class _AuxHead(nn.Module):
    """GoogLeNet's pattern: a head that runs in training only, returned after the logits."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.aux = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(32, 5))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x):
        x = self.body(x)
        aux = self.aux(x) if self.training else None
        x = nn.functional.dropout(self.head(x), 0.1, self.training)  # follows the mode: no branch
        return (x, aux) if self.training else x


def test_an_aux_head_used_in_training_only_is_a_train_output():
    torch.manual_seed(0)
    model = _AuxHead()
    r = imported(model, (["N", 3, 8, 8], "float32"))
    assert "outputs: dropout\ntrain_outputs: {output_1: aux}\n" in r.text
    built = yamlnet.compile(r.text)
    built.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(built.eval()(x), model.eval()(x))
    outs = []
    for net in (model, built):  # the same dropout masks: same seed, same order
        torch.manual_seed(1)
        outs.append(net.train()(x))
    assert len(outs[1]) == 2
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*outs, strict=True))


class _Noisy(nn.Module):
    def forward(self, x):
        if self.training:
            x = x + 0.1 * torch.randn_like(x)
        return x * 2


class _NoisyNet(nn.Module):
    def __init__(self, order=False):
        super().__init__()
        self.fc, self.noise, self.order = nn.Linear(4, 4), _Noisy(), order

    def forward(self, x):
        if self.order:  # the aux pattern, but the logits last in training
            return (x.relu(), self.fc(x)) if self.training else self.fc(x)
        return self.noise(self.fc(x))


@pytest.mark.parametrize("order, message", [
    (False, "forward of 'noise' (_Noisy) computes otherwise in training than in eval (an `if "
            "self.training:` branch); a spec's training mode can only add outputs"),
    (True, "_NoisyNet.forward returns eval's outputs in another order in training; a spec returns "
           "its train_outputs after them"),
])  # fmt: skip
def test_a_training_branch_that_changes_more_than_outputs_is_refused(order, message):
    with pytest.raises(ImportFailure) as err:
        imported(_NoisyNet(order), (["N", 4], "float32"))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


# ---- typical user modules -----------------------------------------------------------------------
class _TextClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(16, 3)

    def forward(self, tokens):
        return self.fc(self.encoder(self.embed(tokens)).mean(dim=1))


class _Residual(nn.Module):
    def __init__(self, c, stride=1):
        super().__init__()
        cin = c if stride == 1 else c // 2
        self.conv1, self.bn1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.short = nn.Sequential()
        if stride != 1:
            self.short = nn.Sequential(nn.Conv2d(cin, c, 1, stride, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        out = self.bn2(self.conv2(nn.functional.relu(self.bn1(self.conv1(x)))))
        return nn.functional.relu(out + self.short(x))


class _ResCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.layers = nn.Sequential(_Residual(8), _Residual(8), _Residual(16, 2), _Residual(16))
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class _UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc1, self.enc2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.dec, self.out = nn.Conv2d(24, 8, 3, padding=1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        skip = nn.functional.relu(self.enc1(x))
        y = nn.functional.relu(self.enc2(skip))
        y = nn.functional.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(nn.functional.relu(self.dec(torch.cat([y, skip], dim=1))))


class _Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(40, 16)
        self.lstm = nn.LSTM(16, 24, batch_first=True, bidirectional=True)
        self.out = nn.Linear(48, 5)

    def forward(self, tokens):
        h, _ = self.lstm(self.embed(tokens))
        return self.out(h)  # a tag per token


@pytest.mark.parametrize("module, shape, dtype, expect, other", [
    (_TextClassifier, ["N", "T"], "int64",
     "layers: {op: TransformerEncoderLayer, repeat: 2, nhead: 2, dim_feedforward: 32", (2, 7)),
    (_ResCNN, ["N", 3, 16, 16], "float32",
     "{block: _residual, repeat: 4", (2, 3, 16, 16)),
    (_UNet, ["N", 3, "H", "W"], "float32",  # the skip's symbolic size read at run time
     "{op: interpolate_like, in: [relu_1, relu], mode: bilinear, align_corners: false}", (2, 3, 10, 14)),
    (_Tagger, ["N", "T"], "int64", 'out:   {op: Linear, in: "lstm[0]", out_features: 5}', (2, 9)),
])  # fmt: skip
def test_typical_user_modules_import_exactly(module, shape, dtype, expect, other):
    torch.manual_seed(0)
    model = module()
    r = imported(model, (shape, dtype))
    assert r.max_abs_diff == 0.0 and expect in r.text
    x = torch.randint(0, 40, other) if dtype == "int64" else torch.randn(other)  # other sizes
    assert round_trip(model, r.text, x) < 1e-6


def rel_bias(table, index, size: int):  # public: fx wraps no name that starts with _
    return torch.permute(table[index.view(-1)].view(size, size, -1), (2, 0, 1))


torch.fx.wrap("rel_bias")  # as torchvision wraps Swin's _get_relative_position_bias


class _RelBias(nn.Module):
    """Swin's and MaxViT's relative position bias: a table indexed by a buffer."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(9, 2))
        self.register_buffer("index", torch.randint(0, 9, (4, 4)))

    def forward(self, x):  # (N, 2, 4, 4)
        return torch.swapaxes(x + rel_bias(self.table, self.index, 4), 2, 3)


def test_a_table_indexed_by_a_buffer_through_a_wrapped_helper():
    torch.manual_seed(0)
    for _ in range(2):  # the first leaves fx able to trace the second (fx.wrap state is global)
        r = imported(_RelBias(), (["N", 2, 4, 4], "float32"))
    assert "{op: getitem, in: [table, view]}" in r.text and "{op: transpose, dim0: 2, dim1: 3}" in r.text
    assert r.max_abs_diff == 0.0
