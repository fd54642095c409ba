"""The model zoo (specs/zoo/): each torchvision-backed spec loads the torchvision model's
state_dict with strict=True and gives its outputs (eval mode, batch 2, 3x224x224, fp32,
max abs diff <= 1e-4)."""

from __future__ import annotations

import pytest
import torch
import torchvision

import yamlnet

from .conftest import SPECS
from .twins import GPTTwin

ZOO = SPECS / "zoo"

# (spec, variables, torchvision builder): the README's test command checks each family's
# first variants; the other sizes (the sweep over every torchvision model) are `extended`
TORCHVISION = [
    ("resnet.yaml", {"depth": 18}, "resnet18"),
    ("resnet.yaml", {"depth": 34}, "resnet34"),
    ("resnet.yaml", {"depth": 50}, "resnet50"),
    pytest.param("resnet.yaml", {"depth": 101}, "resnet101", marks=pytest.mark.extended),
    pytest.param("resnet.yaml", {"depth": 152}, "resnet152", marks=pytest.mark.extended),
    ("resnet.yaml", {"depth": 50, "groups": 32, "width_per_group": 4}, "resnext50_32x4d"),
    pytest.param("resnet.yaml", {"depth": 50, "width_per_group": 128}, "wide_resnet50_2", marks=pytest.mark.extended),
    # the depth-101 variants differ from those above only in depth: checked after the default run
    *[pytest.param("resnet.yaml", {"depth": 101, "groups": g, "width_per_group": w}, builder,
                   marks=pytest.mark.extended)
      for g, w, builder in ((32, 8, "resnext101_32x8d"), (64, 4, "resnext101_64x4d"), (1, 128, "wide_resnet101_2"))],
    ("mobilenet_v2.yaml", {}, "mobilenet_v2"),
    ("efficientnet.yaml", {}, "efficientnet_b0"),
    *[pytest.param("efficientnet.yaml", {"variant": v}, f"efficientnet_{v}", marks=pytest.mark.extended)
      for v in ("b1", "b2", "b3")],
    # RegNet: the stages are derived from torchvision's six parameters by expressions
    ("regnet.yaml", {"variant": "x_400mf"}, "regnet_x_400mf"),
    ("regnet.yaml", {"variant": "y_400mf"}, "regnet_y_400mf"),
    *[pytest.param("regnet.yaml", {"variant": v}, f"regnet_{v}", marks=pytest.mark.extended)
      for v in ("x_800mf", "y_800mf", "x_1_6gf", "y_1_6gf", "x_3_2gf", "y_3_2gf", "x_8gf", "y_8gf")],
    *[pytest.param("regnet.yaml", {"variant": v}, f"regnet_{v}", marks=pytest.mark.extended)  # 54M to 645M parameters
      for v in ("x_16gf", "y_16gf", "x_32gf", "y_32gf", "y_128gf")],
    ("densenet.yaml", {}, "densenet121"),
    pytest.param("densenet.yaml", {"depth": 169}, "densenet169", marks=pytest.mark.extended),
    ("convnext.yaml", {}, "convnext_tiny"),
    pytest.param("convnext.yaml", {"size": "small"}, "convnext_small", marks=pytest.mark.extended),
    ("vit.yaml", {}, "vit_b_16"),
    pytest.param("vit.yaml", {"patch": 32}, "vit_b_32", marks=pytest.mark.extended),
    ("vgg.yaml", {"depth": 11}, "vgg11"),
    ("vgg.yaml", {"depth": 11, "batch_norm": True}, "vgg11_bn"),
    *[pytest.param("vgg.yaml", {"depth": d, "batch_norm": bn}, f"vgg{d}{'_bn' if bn else ''}", marks=pytest.mark.extended)
      for d in (13, 16, 19) for bn in (False, True)],
]


def _id(param) -> str:
    values = param.values if hasattr(param, "values") else param
    return values[2]


@pytest.mark.parametrize("spec, variables, builder", TORCHVISION, ids=[_id(p) for p in TORCHVISION])
def test_torchvision_weights_load_strictly_and_outputs_match(spec, variables, builder):
    torch.manual_seed(0)
    ref = getattr(torchvision.models, builder)().eval()
    model = yamlnet.compile(ZOO / spec, **variables).eval()
    for name, module in model.named_modules():  # rates that grow with depth: stochastic depth
        if type(module).__name__ == "StochasticDepth":
            assert module.p == pytest.approx(ref.get_submodule(name).p, abs=1e-12), name
    assert list(model.state_dict()) == list(ref.state_dict())  # names and order
    model.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (model(x) - ref(x)).abs().max().item()
    assert diff <= 1e-4


# ---- init: and freeze: --------------------------------------------------------------------------
FINETUNE = """
yamlnet: 1
include: [{zoo}/resnet.yaml]              # its blocks: basic, bottleneck, projection
vars: {{classes: 5}}
init: {{file: {weights}, exclude: [fc]}}    # torchvision's resnet18, a new 5-class head
inputs:
  image: [N, 3, 32, 32]
nodes:
  conv1:   {{op: Conv2d, out_channels: 64, kernel_size: 7, stride: 2, padding: 3, bias: false, freeze: true}}
  bn1:     {{op: BatchNorm2d, freeze: true}}
  relu:    {{op: ReLU, inplace: true}}
  maxpool: {{op: MaxPool2d, kernel_size: 3, stride: 2, padding: 1}}
  layer1:  {{block: basic, repeat: 2, planes: 64, freeze: true}}
  layer2:  {{block: basic, repeat: 2, planes: 128, stride: "${{2 if i == 0 else 1}}", freeze: true}}
  layer3:  {{block: basic, repeat: 2, planes: 256, stride: "${{2 if i == 0 else 1}}", freeze: true}}
  layer4:  {{block: basic, repeat: 2, planes: 512, stride: "${{2 if i == 0 else 1}}", freeze: true}}
  avgpool: {{op: AdaptiveAvgPool2d, output_size: [1, 1]}}
  flatten: {{op: flatten, start_dim: 1}}
  fc:      {{op: Linear, out_features: "${{classes}}"}}
data: {{dataset: synthetic, shape: [3, 32, 32], classes: 5, size: 64, val_size: 16, batch_size: 16}}
train: {{epochs: 2, optimizer: {{name: SGD, lr: 0.1}}, seed: 0}}
"""


@pytest.fixture(scope="module")
def torchvision_weights(tmp_path_factory):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    folder = tmp_path_factory.mktemp("weights")
    torch.save(state, folder / "resnet18.pt")
    save_file(state, folder / "resnet18.safetensors")
    return folder, state


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_fine_tune_the_head_of_a_frozen_pretrained_resnet(tmp_path, torchvision_weights, fmt):
    folder, state = torchvision_weights
    spec = tmp_path / "finetune.yaml"
    spec.write_text(FINETUNE.format(zoo=ZOO, weights=folder / f"resnet18.{fmt}"))
    model = yamlnet.compile(spec)
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    for key, value in backbone.items():  # loaded from the file
        assert torch.equal(model.state_dict()[key], value), key
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    if fmt == "safetensors":
        return
    result = yamlnet.train(spec, out=tmp_path / "run")
    trained = torch.load(result.last, weights_only=True)["model"]
    for key, value in backbone.items():  # weights and BatchNorm statistics unchanged
        assert torch.equal(trained[key], value), key
    assert not torch.equal(trained["fc.weight"], model.state_dict()["fc.weight"])  # the head learned


def test_init_refuses_what_does_not_fit(tmp_path, torchvision_weights):
    folder, _ = torchvision_weights
    spec = tmp_path / "bad.yaml"
    spec.write_text(FINETUNE.format(zoo=ZOO, weights=folder / "resnet18.pt").replace(", exclude: [fc]", ""))
    with pytest.raises(yamlnet.SpecError) as err:
        yamlnet.compile(spec)
    lines = str(err.value).splitlines()
    weights = folder / "resnet18.pt"
    assert lines == [
        f"{spec}:5:1: init: {weights}: fc.weight: the file has [1000, 512] ('fc.weight'), the model [5, 512]",
        f"{spec}:5:1: init: {weights}: fc.bias: the file has [1000] ('fc.bias'), the model [5]",
    ]
    spec.write_text(FINETUNE.format(zoo=ZOO, weights="missing.pt"))
    with pytest.raises(yamlnet.SpecError, match=r"init.file: no such file: .*missing.pt"):
        yamlnet.compile(spec)


def test_init_into_a_subtree_from_a_prefix(tmp_path):
    torch.manual_seed(0)
    state = {"encoder.fc.weight": torch.randn(4, 3), "encoder.fc.bias": torch.randn(4), "other": torch.zeros(1)}
    torch.save(state, tmp_path / "w.pt")
    (tmp_path / "net.yaml").write_text(
        "yamlnet: 1\n"
        "init: {file: w.pt, into: head, from: encoder.fc}\n"
        "inputs: {x: [N, 3]}\n"
        "nodes:\n"
        "  body: {op: Linear, out_features: 3}\n"
        "  head: {op: Linear, out_features: 4}\n"
    )
    model = yamlnet.compile(tmp_path / "net.yaml")
    assert torch.equal(model.head.weight, state["encoder.fc.weight"])
    assert torch.equal(model.head.bias, state["encoder.fc.bias"])


# ---- beyond torchvision: hand-written twins -----------------------------------------------------
def twin_check(model, twin, *inputs, tol=1e-5):
    """Same state_dict keys and shapes; twin's weights loaded strictly; outputs equal."""
    ours = model.state_dict()
    theirs = twin.state_dict()
    assert list(ours) == list(theirs) or sorted(ours) == sorted(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    model.load_state_dict(theirs, strict=True)
    model.eval(), twin.eval()
    with torch.no_grad():
        got, want = model(*inputs), twin(*inputs)
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and (a - b).abs().max().item() <= tol


def test_gpt_matches_its_twin_and_ties_the_head():
    torch.manual_seed(0)
    twin = GPTTwin()
    model = yamlnet.compile(ZOO / "gpt.yaml")
    assert model.head.weight is model.tok_emb.weight
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in twin.parameters())
    twin_check(model, twin, torch.randint(0, 512, (2, 13)))  # T=13: the length is symbolic
    assert model.head.weight is model.tok_emb.weight  # loading kept the tie
    model.train()
    model(torch.randint(0, 512, (2, 5))).sum().backward()
    assert model.tok_emb.weight.grad is not None


class UNetTwin(torch.nn.Module):
    def __init__(self, channels=3, classes=2, base=16):
        super().__init__()
        nn = torch.nn

        def double(cin, cout):
            m = nn.Module()
            m.conv1, m.bn1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
            m.conv2, m.bn2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
            return m

        def down(cin, cout):
            m = nn.Module()
            m.conv = double(cin, cout)
            return m

        def up(cin, cout):  # cin: the deeper map's channels; the skip has cin // 2
            m = nn.Module()
            m.up = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
            m.conv = double(cin, cout)
            return m

        self.inc = double(channels, base)
        self.down1, self.down2, self.down3 = down(base, 2 * base), down(2 * base, 4 * base), down(4 * base, 8 * base)
        self.up1, self.up2, self.up3 = up(8 * base, 4 * base), up(4 * base, 2 * base), up(2 * base, base)
        self.outc = nn.Conv2d(base, classes, 1)

    @staticmethod
    def _double(m, x):
        import torch.nn.functional as F

        return F.relu(m.bn2(m.conv2(F.relu(m.bn1(m.conv1(x))))))

    def forward(self, x):
        import torch.nn.functional as F

        x1 = self._double(self.inc, x)
        x2 = self._double(self.down1.conv, F.max_pool2d(x1, 2))
        x3 = self._double(self.down2.conv, F.max_pool2d(x2, 2))
        x4 = self._double(self.down3.conv, F.max_pool2d(x3, 2))
        y = x4
        for up, skip in ((self.up1, x3), (self.up2, x2), (self.up3, x1)):
            y = self._double(up.conv, torch.cat([skip, up.up(y)], 1))
        return self.outc(y)


def _randomize_norm_statistics(module):
    """BatchNorm running statistics that are not the identity, so eval mode means something."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)


def test_unet_matches_its_twin_at_several_sizes():
    torch.manual_seed(0)
    twin = UNetTwin()
    _randomize_norm_statistics(twin)
    model = yamlnet.compile(ZOO / "unet.yaml")
    twin_check(model, twin, torch.randn(2, 3, 64, 48))
    twin_check(model, twin, torch.randn(1, 3, 32, 96))  # H and W are symbolic


class LSTMSeq2SeqTwin(torch.nn.Module):
    def __init__(self, source_vocab=1000, target_vocab=1000, dim=64, hidden=128, layers=2):
        super().__init__()
        nn = torch.nn
        self.src_emb, self.tgt_emb = nn.Embedding(source_vocab, dim), nn.Embedding(target_vocab, dim)
        self.encoder = nn.LSTM(dim, hidden, layers, batch_first=True)
        self.decoder = nn.LSTM(dim, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, target_vocab)

    def forward(self, source, target):
        _, state = self.encoder(self.src_emb(source))
        steps, (h, _) = self.decoder(self.tgt_emb(target), state)
        return self.out(steps), h[-1]


def test_lstm_seq2seq_matches_its_twin_with_two_inputs_and_outputs():
    torch.manual_seed(0)
    twin = LSTMSeq2SeqTwin()
    model = yamlnet.compile(ZOO / "lstm_seq2seq.yaml")
    source, target = torch.randint(0, 1000, (3, 11)), torch.randint(0, 1000, (3, 7))
    twin_check(model, twin, source, target)
